package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weft-net/weft/engine"
)

// FilterSyntax is the filter grammar, for `weft capture -h` and errors.
const FilterSyntax = `A filter is a tcpdump-like expression over the inner IPv4 or IPv6 packet
and where the engine saw it:

  host ADDR         source or destination is ADDR   (src host, dst host)
  net CIDR          source or destination in CIDR   (src net, dst net)
  port N            TCP or UDP port N, either side  (src port, dst port)
  tcp | udp | icmp | icmp6
                    the IP protocol (IPv6: the first next header);
                    proto N for any other number
  ip | ip6          the IP version
  peer ADDR[:PORT]  the underlay peer the packet went to or came from
                    ([ADDR]:PORT for IPv6)
  from-tun | to-tun | drop
                    the capture point (also: point NAME)
  reason NAME       a drop for this reason (implies drop), e.g. spoofed-source
  not X | X and Y | X or Y | ( X )
                    also !, &&, ||; "and" binds tighter than "or"; two
                    terms side by side are and-ed: "tcp port 80"

At most 64 terms and 4 KiB.

Examples: 'icmp and host 10.5.2.3'   'drop and not reason no-route'
          'tcp port 80 and net 10.5.1.0/24'   'peer 192.0.2.2 and to-tun'
          'icmp6 and net fd00:10:5:21::/64'`

// MaxFilterLen is the longest filter expression accepted, in bytes (also
// after tokenizing, which may add blanks): filters are typed by people, and
// the expression is recorded in the pcapng's if_filter option, whose length
// is 16 bits.
const MaxFilterLen = 4 << 10

// MaxFilterTerms is the most primitives (host, port, tcp, ...) one filter
// may hold. A filter runs on both forwarding loops for every packet while
// its capture runs; compiled, it is at most this many tests.
const MaxFilterTerms = 64

// Filter is a compiled filter expression. Its zero value (and nil) match
// every packet.
type Filter struct {
	expr string
	root *node // the parse tree, compiled into prog
	prog []insn
}

// insn is one test of a compiled filter: a primitive, then where to go
// when it holds (jt) and when it does not (jf), as in classic BPF. The
// targets are later instructions or accept/reject, so evaluation runs
// forward only, one step per primitive at most: and, or and not cost
// nothing at run time.
type insn struct {
	node   // op is a primitive, never opAnd, opOr or opNot
	jt, jf int16
}

const (
	jAccept int16 = -1
	jReject int16 = -2
)

// String returns the expression the filter was parsed from.
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	return f.expr
}

type op uint8

const (
	opAnd op = iota
	opOr
	opNot
	opHost
	opNet
	opPort
	opProto
	opPeer
	opPoint
	opReason
	opVersion // ip, ip6: proto holds 4 or 6
)

// side says which address or port of the packet a primitive looks at.
type side uint8

const (
	either side = iota
	src
	dst
)

// node is one operator or primitive. Evaluation is a concrete recursive
// method, not an interface call, so the packet view passed to it does not
// escape and matching allocates nothing.
type node struct {
	op     op
	a, b   *node
	side   side
	addr   uint32
	mask   uint32
	net6   netip.Prefix // opHost, opNet on IPv6 (a host is a /128)
	port   uint16
	proto  uint8
	point  engine.Point
	reason engine.DropReason
	peer   netip.AddrPort // port 0: any port
}

// view is what a filter looks at: a packet's metadata and the parts of its
// headers the primitives use, parsed once per packet.
type view struct {
	point      engine.Point
	reason     engine.DropReason
	peer       netip.AddrPort
	ip         bool // an IPv4 header was readable: src, dst, proto are valid
	ip6        bool // an IPv6 header was readable: src6, dst6, proto are valid
	ports      bool // a TCP or UDP header was readable: sport, dport are valid
	src, dst   uint32
	src6, dst6 [16]byte
	proto      uint8
	sport, dpt uint16
}

func (v *view) parse(p *engine.TapPacket) {
	*v = view{point: p.Point, reason: p.Reason, peer: p.Peer}
	d := p.Data
	if len(d) >= 40 && d[0]>>4 == 6 {
		// The first next header is the protocol; ports only when it is
		// TCP or UDP itself (extension headers are not walked).
		v.ip6 = true
		v.proto = d[6]
		copy(v.src6[:], d[8:24])
		copy(v.dst6[:], d[24:40])
		if (v.proto == 6 || v.proto == 17) && len(d) >= 44 {
			v.ports = true
			v.sport = uint16(d[40])<<8 | uint16(d[41])
			v.dpt = uint16(d[42])<<8 | uint16(d[43])
		}
		return
	}
	if len(d) < 20 || d[0]>>4 != 4 {
		return
	}
	v.ip = true
	v.proto = d[9]
	v.src = uint32(d[12])<<24 | uint32(d[13])<<16 | uint32(d[14])<<8 | uint32(d[15])
	v.dst = uint32(d[16])<<24 | uint32(d[17])<<16 | uint32(d[18])<<8 | uint32(d[19])
	ihl := int(d[0]&0x0f) * 4
	fragOff := (uint16(d[6])<<8 | uint16(d[7])) & 0x1fff
	if (v.proto == 6 || v.proto == 17) && fragOff == 0 && ihl >= 20 && len(d) >= ihl+4 {
		v.ports = true
		v.sport = uint16(d[ihl])<<8 | uint16(d[ihl+1])
		v.dpt = uint16(d[ihl+2])<<8 | uint16(d[ihl+3])
	}
}

// test evaluates a primitive.
func (n *node) test(v *view) bool {
	switch n.op {
	case opHost, opNet:
		if n.net6.IsValid() {
			return v.ip6 && ((n.side != dst && n.net6.Contains(netip.AddrFrom16(v.src6))) ||
				(n.side != src && n.net6.Contains(netip.AddrFrom16(v.dst6))))
		}
		if !v.ip {
			return false
		}
		return (n.side != dst && v.src&n.mask == n.addr) || (n.side != src && v.dst&n.mask == n.addr)
	case opPort:
		if !v.ports {
			return false
		}
		return (n.side != dst && v.sport == n.port) || (n.side != src && v.dpt == n.port)
	case opProto:
		return (v.ip || v.ip6) && v.proto == n.proto
	case opVersion:
		return (n.proto == 4 && v.ip) || (n.proto == 6 && v.ip6)
	case opPeer:
		return v.peer.IsValid() && v.peer.Addr() == n.peer.Addr() && (n.peer.Port() == 0 || v.peer.Port() == n.peer.Port())
	case opPoint:
		return v.point == n.point
	case opReason:
		return v.point == engine.PointDrop && v.reason == n.reason
	}
	return false
}

// matchesAll reports whether the filter accepts every packet.
func (f *Filter) matchesAll() bool { return f == nil || len(f.prog) == 0 }

// match runs the compiled filter over a parsed packet.
func (f *Filter) match(v *view) bool {
	pc := int16(0)
	for {
		in := &f.prog[pc]
		next := in.jf
		if in.test(v) {
			next = in.jt
		}
		switch next {
		case jAccept:
			return true
		case jReject:
			return false
		}
		pc = next
	}
}

// Match reports whether the filter accepts p.
func (f *Filter) Match(p *engine.TapPacket) bool {
	if f.matchesAll() {
		return true
	}
	var v view
	v.parse(p)
	return f.match(&v)
}

// compile flattens the tree into f.prog. Code is emitted back to front
// (rev), so that the targets of a test, which come after it, already
// exist: for "a and b", b is emitted first and a jumps to it when true.
func (f *Filter) compile() {
	var rev []insn
	var emit func(n *node, t, fl int16) int16
	// Targets in rev are indices from the end; pos maps them to the final
	// order once the length is known.
	emit = func(n *node, t, fl int16) int16 {
		switch n.op {
		case opAnd:
			b := emit(n.b, t, fl)
			return emit(n.a, b, fl)
		case opOr:
			b := emit(n.b, t, fl)
			return emit(n.a, t, b)
		case opNot:
			return emit(n.a, fl, t)
		}
		rev = append(rev, insn{node: *n, jt: t, jf: fl})
		return int16(len(rev) - 1)
	}
	emit(f.root, jAccept, jReject)
	last := int16(len(rev) - 1)
	pos := func(k int16) int16 {
		if k < 0 {
			return k
		}
		return last - k
	}
	f.prog = make([]insn, len(rev))
	for k, in := range rev {
		in.a, in.b = nil, nil
		in.jt, in.jf = pos(in.jt), pos(in.jf)
		f.prog[last-int16(k)] = in
	}
}

// ParseFilter compiles expr. An empty expression matches everything. A bad
// expression is refused with an error naming the offending token.
func ParseFilter(expr string) (*Filter, error) {
	if len(expr) > MaxFilterLen {
		return nil, fmt.Errorf("filter: %d bytes is longer than the most, %d", len(expr), MaxFilterLen)
	}
	toks := tokenize(expr)
	f := &Filter{expr: strings.Join(toks, " ")}
	if len(f.expr) > MaxFilterLen {
		return nil, fmt.Errorf("filter: %d bytes (with blanks between tokens) is longer than the most, %d", len(f.expr), MaxFilterLen)
	}
	if len(toks) == 0 {
		return f, nil
	}
	p := &parser{toks: toks}
	root, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.i < len(toks) {
		return nil, p.errorf("expected and, or or the end of the filter")
	}
	f.root = root
	f.compile()
	return f, nil
}

// tokenize splits on blanks and around ( ) ! && || so "!(tcp||udp)" works.
func tokenize(s string) []string {
	var toks []string
	cur := strings.Builder{}
	flush := func() {
		if cur.Len() > 0 {
			toks = append(toks, cur.String())
			cur.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			flush()
		case c == '(' || c == ')':
			flush()
			toks = append(toks, string(c))
		case (c == '&' || c == '|') && i+1 < len(s) && s[i+1] == c:
			flush()
			toks = append(toks, s[i:i+2])
			i++
		case c == '!':
			flush()
			toks = append(toks, "!")
		default:
			cur.WriteByte(c)
		}
	}
	flush()
	return toks
}

type parser struct {
	toks  []string
	i     int
	terms int // primitives so far
}

func (p *parser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *parser) next() string {
	t := p.peek()
	p.i++
	return t
}

// errorf names the token at the parser's position (or the end).
func (p *parser) errorf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if p.i >= len(p.toks) {
		return fmt.Errorf("filter: at the end of %q: %s", strings.Join(p.toks, " "), msg)
	}
	return fmt.Errorf("filter: token %d %q: %s", p.i+1, p.toks[p.i], msg)
}

// maxDepth bounds nesting, so a hostile expression cannot exhaust the stack.
const maxDepth = 64

func (p *parser) or() (*node, error) { return p.orDepth(0) }

func (p *parser) orDepth(depth int) (*node, error) {
	if depth > maxDepth {
		return nil, p.errorf("nested more than %d deep", maxDepth)
	}
	a, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for t := p.peek(); t == "or" || t == "||"; t = p.peek() {
		p.next()
		b, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		a = &node{op: opOr, a: a, b: b}
	}
	return a, nil
}

func (p *parser) and(depth int) (*node, error) {
	a, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for t := p.peek(); t == "and" || t == "&&" || startsPrimitive(t); t = p.peek() {
		if !startsPrimitive(t) {
			p.next()
		}
		b, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		a = &node{op: opAnd, a: a, b: b}
	}
	return a, nil
}

func (p *parser) unary(depth int) (*node, error) {
	if depth > maxDepth {
		return nil, p.errorf("nested more than %d deep", maxDepth)
	}
	switch p.peek() {
	case "not", "!":
		p.next()
		a, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return &node{op: opNot, a: a}, nil
	case "(":
		p.next()
		a, err := p.orDepth(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.peek() != ")" {
			return nil, p.errorf("expected )")
		}
		p.next()
		return a, nil
	}
	return p.primitive()
}

// startsPrimitive: a term that follows another with no operator is
// and-ed to it, as in tcpdump's "tcp port 80".
func startsPrimitive(t string) bool {
	switch t {
	case "", "and", "&&", "or", "||", ")":
		return false
	}
	return true
}

const primitives = "host, net, port, tcp, udp, icmp, icmp6, ip, ip6, proto, peer, from-tun, to-tun, drop, point, reason, not or ("

func (p *parser) primitive() (*node, error) {
	if p.terms++; p.terms > MaxFilterTerms {
		return nil, p.errorf("more than %d terms", MaxFilterTerms)
	}
	sd := either
	switch p.peek() {
	case "src":
		sd = src
		p.next()
	case "dst":
		sd = dst
		p.next()
	}
	start := p.i
	t := p.next()
	switch t {
	case "host":
		a, err := netip.ParseAddr(p.peek())
		switch {
		case err == nil && a.Is4():
			p.next()
			return &node{op: opHost, side: sd, addr: u32(a), mask: ^uint32(0)}, nil
		case err == nil && a.Is6() && !a.Is4In6() && a.Zone() == "":
			p.next()
			return &node{op: opHost, side: sd, net6: netip.PrefixFrom(a, 128)}, nil
		}
		return nil, p.errorf("expected an IPv4 or IPv6 address after host")
	case "net":
		pf, err := netip.ParsePrefix(p.peek())
		switch {
		case err == nil && pf.Addr().Is4():
			p.next()
			pf = pf.Masked()
			return &node{op: opNet, side: sd, addr: u32(pf.Addr()), mask: mask(pf.Bits())}, nil
		case err == nil && pf.Addr().Is6() && !pf.Addr().Is4In6():
			p.next()
			return &node{op: opNet, side: sd, net6: pf.Masked()}, nil
		}
		return nil, p.errorf("expected an IPv4 or IPv6 CIDR (10.5.1.0/24, fd00:10:5:21::/64) after net")
	case "port":
		n, err := strconv.ParseUint(p.peek(), 10, 16)
		if err != nil {
			return nil, p.errorf("expected a port number 0..65535 after port")
		}
		p.next()
		return &node{op: opPort, side: sd, port: uint16(n)}, nil
	}
	if sd != either {
		p.i = start
		return nil, p.errorf("expected host, net or port after src or dst")
	}
	switch t {
	case "tcp":
		return &node{op: opProto, proto: 6}, nil
	case "udp":
		return &node{op: opProto, proto: 17}, nil
	case "icmp":
		return &node{op: opProto, proto: 1}, nil
	case "icmp6":
		return &node{op: opProto, proto: 58}, nil
	case "ip":
		return &node{op: opVersion, proto: 4}, nil
	case "ip6":
		return &node{op: opVersion, proto: 6}, nil
	case "proto":
		n, err := protoNumber(p.peek())
		if err != nil {
			return nil, p.errorf("expected tcp, udp, icmp, icmp6 or a number 0..255 after proto")
		}
		p.next()
		return &node{op: opProto, proto: n}, nil
	case "peer":
		ap, err := parsePeer(p.peek())
		if err != nil {
			return nil, p.errorf("expected an IPv4 or IPv6 address, optionally with :PORT ([ADDR]:PORT for IPv6), after peer")
		}
		p.next()
		return &node{op: opPeer, peer: ap}, nil
	case "point":
		pt, ok := ParsePoint(p.peek())
		if !ok {
			return nil, p.errorf("expected from-tun, to-tun or drop after point")
		}
		p.next()
		return &node{op: opPoint, point: pt}, nil
	case "reason":
		r, ok := parseReason(p.peek())
		if !ok {
			return nil, p.errorf("expected a drop reason after reason (one of %s)", reasonNames())
		}
		p.next()
		return &node{op: opReason, reason: r}, nil
	case "":
		p.i = start
		return nil, p.errorf("expected one of %s", primitives)
	}
	if pt, ok := ParsePoint(t); ok {
		return &node{op: opPoint, point: pt}, nil
	}
	p.i = start
	return nil, p.errorf("unknown word; expected one of %s", primitives)
}

func protoNumber(s string) (uint8, error) {
	switch s {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "icmp":
		return 1, nil
	case "icmp6":
		return 58, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	return uint8(n), err
}

func parsePeer(s string) (netip.AddrPort, error) {
	usable := func(a netip.Addr) bool { return a.Is4() || a.Is6() && !a.Is4In6() && a.Zone() == "" }
	if a, err := netip.ParseAddr(s); err == nil && usable(a) {
		return netip.AddrPortFrom(a, 0), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !usable(ap.Addr()) {
		return netip.AddrPort{}, fmt.Errorf("not an IPv4 or IPv6 address")
	}
	return ap, nil
}

// ParsePoint parses a capture point's name (from-tun, to-tun, drop).
func ParsePoint(s string) (engine.Point, bool) {
	for pt := engine.Point(0); pt < engine.NumPoints; pt++ {
		if pt.String() == s {
			return pt, true
		}
	}
	return 0, false
}

func parseReason(s string) (engine.DropReason, bool) {
	for r := engine.DropReason(1); r < engine.NumDropReasons; r++ {
		if r.String() == s {
			return r, true
		}
	}
	return 0, false
}

func reasonNames() string {
	var names []string
	for r := engine.DropReason(1); r < engine.NumDropReasons; r++ {
		names = append(names, r.String())
	}
	return strings.Join(names, ", ")
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func mask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
