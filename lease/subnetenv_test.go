package lease

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteSubnetFileFixtures(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		backend, subnet string
		mtu             int
	}{
		{"udp", "10.5.42.0/24", 1472},
		{"vxlan", "10.5.92.0/24", 1450},
		{"host-gw", "10.5.21.0/24", 1500},
	} {
		want, err := os.ReadFile(filepath.Join("testdata", "subnet-"+tt.backend+"-h1.env"))
		if err != nil {
			t.Fatal(err)
		}
		// A missing parent directory is created, as for /run/flannel.
		path := filepath.Join(dir, tt.backend, "run", "subnet.env")
		env := SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix(tt.subnet), MTU: tt.mtu}
		if err := WriteSubnetFile(path, env); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", tt.backend, got, want)
		}
		prev, _, err := ReadSubnetFile(path)
		if err != nil || prev != netip.MustParsePrefix(tt.subnet) {
			t.Errorf("%s: ReadSubnetFile = %v, %v; want %s", tt.backend, prev, err, tt.subnet)
		}
		// Overwriting leaves no temporary files behind.
		env.IPMasq = true
		if err := WriteSubnetFile(path, env); err != nil {
			t.Fatal(err)
		}
		if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
			t.Errorf("%s: %d files in the directory, want 1", tt.backend, len(ents))
		}
		if got, _ := os.ReadFile(path); !bytes.Contains(got, []byte("\nFLANNEL_IPMASQ=true\n")) {
			t.Errorf("%s: rewrite: %q", tt.backend, got)
		}
	}
}

func TestReadSubnetFile(t *testing.T) {
	dir := t.TempDir()
	if p, _, err := ReadSubnetFile(filepath.Join(dir, "missing.env")); err != nil || p.IsValid() {
		t.Errorf("missing file: %v, %v", p, err)
	}
	for content, want := range map[string]string{
		"FLANNEL_NETWORK=10.5.0.0/16\n":                           "invalid Prefix",
		"FLANNEL_SUBNET=10.5.57.1/24\n":                           "10.5.57.0/24",
		"# comment\nFLANNEL_SUBNET = \"10.5.57.1/24\"\nFOO=bar\n": "10.5.57.0/24",
		"FLANNEL_SUBNET=10.5.57.1/24":                             "10.5.57.0/24", // no final newline
	} {
		path := filepath.Join(dir, "f.env")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		p, _, err := ReadSubnetFile(path)
		if err != nil || p.String() != want {
			t.Errorf("%q: %v, %v; want %s", content, p, err, want)
		}
	}
	path := filepath.Join(dir, "bad.env")
	os.WriteFile(path, []byte("FLANNEL_SUBNET=banana\n"), 0o644)
	if _, _, err := ReadSubnetFile(path); err == nil {
		t.Error("garbage FLANNEL_SUBNET accepted")
	}
}

func TestSubnetEnvRefuses(t *testing.T) {
	ok := SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.1.0/24"), MTU: 1472}
	for name, env := range map[string]SubnetEnv{
		"no network": {Subnet: ok.Subnet, MTU: 1472},
		"no subnet":  {Network: ok.Network, MTU: 1472},
		"no MTU":     {Network: ok.Network, Subnet: ok.Subnet},
	} {
		if err := WriteSubnetFile(filepath.Join(t.TempDir(), "x.env"), env); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
