package scale

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/bench/lab/labtest"
)

// The scale bench end to end at a small N: start, a churn, the repair of
// hand-deleted entries and a restart, for udp and kernel vxlan. A
// restart must hold every peer again without changing the kernel's
// state; the daemon's CPU profiles of the quiet window and of the churn
// are saved. Figures are the bench's business, not this test's.
func TestRunSmall(t *testing.T) {
	labtest.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "weft")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/weft-net/weft/cmd/weft").CombinedOutput(); err != nil {
		t.Fatalf("building weft: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	profiles := t.TempDir()
	rs, err := Run(ctx, Options{
		Binaries: []string{bin}, Hosts: 30, Backends: []string{"udp", "vxlan"}, Events: 10, Rates: []int{200},
		CPUProfileDir: profiles, Timeout: time.Minute, Progress: func(s string) { t.Log(s) },
	})
	WriteTable(os.Stderr, rs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2", len(rs))
	}
	for _, r := range rs {
		switch {
		case r.Error != "":
			t.Errorf("%s: %s", r.Backend, r.Error)
		case r.Start <= 0 || len(r.Churn) != 1 || r.Churn[0].CPUPerEvent <= 0:
			t.Errorf("%s: no start or churn figures: %+v", r.Backend, r)
		case r.Restart == nil || r.Restart.Took <= 0:
			t.Errorf("%s: no restart figure: %+v", r.Backend, r.Restart)
		case r.Backend == "vxlan" && r.Restart.KernelChanges != 0:
			t.Errorf("vxlan: the restart changed %d kernel entries, want none", r.Restart.KernelChanges)
		case r.Backend == "vxlan" && r.Repair <= 0:
			t.Errorf("vxlan: no repair figure")
		case r.IdleCPU < 0:
			t.Errorf("%s: idle CPU %v", r.Backend, r.IdleCPU)
		}
		for _, when := range []string{"idle", "churn200"} {
			name := filepath.Join(profiles, "weft-"+r.Backend+"-30-"+when+".cpu.pb.gz")
			if st, err := os.Stat(name); err != nil || st.Size() == 0 {
				t.Errorf("%s: no CPU profile of the %s: %v", r.Backend, when, err)
			}
		}
	}
}
