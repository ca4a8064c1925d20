package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
)

// ipt drives one of iptables and ip6tables for a fixed, ordered set of
// flanneld's rules.
//
// flanneld (v0.28.9 pkg/trafficmngr/iptables/iptables.go ensureIPTables
// and ipTablesBootstrap) checks every rule with -C and, when one is
// missing, deletes and re-appends the whole set in one iptables-restore
// --noflush transaction, because the order of the rules is what makes
// them right: the kube-proxy-mark RETURN must come before MASQUERADE.
// weft does the same, with two differences that make it exact:
//   - a rebuild flushes flanneld's chains (":CHAIN - [0:0]" under
//     --noflush) instead of deleting rule by rule, so a foreign rule
//     inserted into them goes too, and deletes every jump carrying
//     flanneld's comment from the built-in chain, so duplicates and the
//     rules of a previous network or an older flanneld go too;
//   - the check compares each chain with the listing iptables gave right
//     after the last rebuild, so a reordered, added or duplicated rule is
//     seen, not only a missing one, and costs one `iptables -S` per chain
//     instead of one -C per rule.
type ipt struct {
	ipt     *iptables.IPTables
	restore string // iptables-restore or ip6tables-restore
	wait    bool   // restore understands --wait

	mu    sync.Mutex
	rules []Rule
	// listed is the `iptables -S` of each chain holding t.rules after
	// the last rebuild (see list for the keys).
	listed map[string][]string
}

// ErrNoIPTables says iptables cannot be used: a binary is missing
// (iptables and iptables-restore, or for IPv6 ip6tables and
// ip6tables-restore), or the kernel has no netfilter tables of that
// family. The error says which.
var ErrNoIPTables = errors.New("iptables cannot be used")

// ErrNoIP6Tables is ErrNoIPTables for IPv6 rules; errors.Is matches
// either with it. A host may have iptables and not ip6tables (a
// distribution's split packages, a kernel booted with ipv6.disable=1).
var ErrNoIP6Tables error = noIP6Tables{}

type noIP6Tables struct{}

func (noIP6Tables) Error() string        { return "ip6tables cannot be used" }
func (noIP6Tables) Is(target error) bool { return target == ErrNoIPTables }

// newIPT finds a family's two binaries and checks that the kernel has
// the family's nat and filter tables, so that a missing piece is named
// before any rule is touched.
func newIPT(proto iptables.Protocol) (*ipt, error) {
	sentinel, tool, family, pkg := ErrNoIPTables, "iptables", "IPv4", "iptables"
	if proto == iptables.ProtocolIPv6 {
		sentinel, tool, family, pkg = ErrNoIP6Tables, "ip6tables", "IPv6", "iptables; Alpine's is ip6tables"
	}
	t, err := iptables.NewWithProtocol(proto)
	if err != nil {
		return nil, fmt.Errorf("%w: %s not found (install %s): %v", sentinel, tool, pkg, err)
	}
	path, err := exec.LookPath(tool + "-restore")
	if err != nil {
		return nil, fmt.Errorf("%w: %s-restore not found (install %s): %v", sentinel, tool, pkg, err)
	}
	for _, table := range []string{"nat", "filter"} {
		chain := map[string]string{"nat": "POSTROUTING", "filter": "FORWARD"}[table]
		// Listing a built-in chain creates nothing (iptables-nft adds
		// no table for it), so a family the config does not use is left
		// as it was.
		if _, err := t.List(table, chain); err != nil {
			module := strings.TrimSuffix(tool, "s") + "_" + table
			return nil, fmt.Errorf("%w: the kernel gives %s no %s %s table (%s disabled, as by ipv6.disable=1, or no %s or nf_tables module?): %v",
				sentinel, tool, family, table, family, module, err)
		}
	}
	// --wait arrived in iptables-restore 1.6.2, as flannel's
	// iptables_restore.go checks.
	v1, v2, v3 := t.GetIptablesVersion()
	wait := v1 > 1 || v1 == 1 && (v2 > 6 || v2 == 6 && v3 >= 2)
	return &ipt{ipt: t, restore: path, wait: wait}, nil
}

func (t *ipt) family() string {
	if t.ipt.Proto() == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// set replaces the rules t keeps; the next ensure rebuilds.
func (t *ipt) set(rules []Rule) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rules = slices.Clone(rules)
	t.listed = nil
}

// ensure rebuilds the rules unless they are intact (or force is set). It
// reports whether it rebuilt.
func (t *ipt) ensure(force bool) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !force {
		ok, err := t.intact()
		if err != nil {
			return false, err
		}
		if ok {
			return false, nil
		}
	}
	return true, t.rebuild()
}

// intact compares each chain holding flanneld's rules with its listing
// after the last rebuild: all of an own chain, and the lines carrying
// flanneld's comment of a built-in one (so a missing or duplicated jump
// is seen; where foreign rules sit around it is theirs to decide).
func (t *ipt) intact() (bool, error) {
	if t.listed == nil {
		return false, nil
	}
	for key, want := range t.listed {
		got, err := t.list(key)
		if err != nil {
			if isNoChain(err) {
				return false, nil
			}
			return false, err
		}
		if !slices.Equal(got, want) {
			return false, nil
		}
	}
	return true, nil
}

// list lists a chain by key: "table/chain", or
// "table/chain/comment" for only the rules carrying comment.
func (t *ipt) list(key string) ([]string, error) {
	parts := strings.SplitN(key, "/", 3)
	lines, err := t.ipt.List(parts[0], parts[1])
	if err != nil {
		return nil, fmt.Errorf("%s: list %s/%s: %w", t.family(), parts[0], parts[1], err)
	}
	if len(parts) < 3 {
		return lines, nil
	}
	var out []string
	for _, l := range lines {
		if strings.Contains(l, `--comment "`+parts[2]+`"`) {
			out = append(out, l)
		}
	}
	return out, nil
}

func isNoChain(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && (e.IsNotExist() || e.ExitStatus() == 1)
}

// rebuild replaces flanneld's chains and jumps with t.rules, one
// iptables-restore transaction per table, and records the listings. A
// chain of flanneld's that t.rules do not use is deleted with its jumps
// in the same transaction.
func (t *ipt) rebuild() error {
	for _, table := range []string{"nat", "filter"} {
		var b bytes.Buffer
		fmt.Fprintf(&b, "*%s\n", table)
		n := 0
		for _, c := range ownChains {
			if c.table != table {
				continue
			}
			used := slices.ContainsFunc(t.rules, func(r Rule) bool { return r.Table == table && r.Chain == c.chain })
			k, err := t.deleteJumps(&b, table, c.from, c.comment)
			if err != nil {
				return err
			}
			n += k
			if used {
				// Under --noflush this creates the chain or flushes it.
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.chain)
				n++
				continue
			}
			exists, err := t.ipt.ChainExists(table, c.chain)
			if err != nil {
				return fmt.Errorf("%s: %w", t.family(), err)
			}
			if exists {
				fmt.Fprintf(&b, "-F %s\n-X %s\n", c.chain, c.chain)
				n++
			}
		}
		for _, r := range t.rules {
			if r.Table == table {
				fmt.Fprintf(&b, "-A %s %s\n", r.Chain, restoreArgs(r.Spec))
				n++
			}
		}
		if n == 0 {
			continue
		}
		b.WriteString("COMMIT\n")
		if err := t.apply(b.Bytes()); err != nil {
			return err
		}
	}
	listed := map[string][]string{}
	for _, r := range t.rules {
		key := r.Table + "/" + r.Chain
		if _, own := ownChain(r.Chain); !own {
			comment, _ := ownChain(r.Spec[len(r.Spec)-1])
			key += "/" + comment
		}
		if _, done := listed[key]; done {
			continue
		}
		l, err := t.list(key)
		if err != nil {
			return err
		}
		listed[key] = l
	}
	t.listed = listed
	return nil
}

// deleteJumps writes a -D line for every rule of the built-in chain from
// that carries comment: flanneld's jumps, also duplicates and the rules
// older flanneld versions put there directly. It returns their number.
func (t *ipt) deleteJumps(b *bytes.Buffer, table, from, comment string) (int, error) {
	lines, err := t.ipt.List(table, from)
	if err != nil {
		return 0, fmt.Errorf("%s: list %s/%s: %w", t.family(), table, from, err)
	}
	n := 0
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "-A "+from+" "); ok && strings.Contains(rest, `--comment "`+comment+`"`) {
			fmt.Fprintf(b, "-D %s %s\n", from, rest)
			n++
		}
	}
	return n, nil
}

// remove deletes flanneld's chains and jumps whatever rules they hold.
func (t *ipt) remove() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rules, t.listed = nil, nil
	return t.rebuild()
}

func (t *ipt) apply(payload []byte) error {
	args := []string{"--noflush"}
	if t.wait {
		args = append(args, "--wait")
	}
	cmd := exec.Command(t.restore, args...)
	cmd.Stdin = bytes.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s --noflush: %v: %s (input:\n%s)", t.restore, err, bytes.TrimSpace(out), payload)
	}
	return nil
}

// restoreArgs joins a rule spec for iptables-restore, quoting the
// comment (it holds a space), as iptables-save prints it.
func restoreArgs(spec []string) string {
	out := make([]string, len(spec))
	for i, s := range spec {
		if i > 0 && spec[i-1] == "--comment" {
			s = `"` + s + `"`
		}
		out[i] = s
	}
	return strings.Join(out, " ")
}
