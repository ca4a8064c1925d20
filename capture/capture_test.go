package capture

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/weft-net/weft/engine"
	"github.com/weft-net/weft/engine/enginetest"
)

// fakeTarget records what the hub attaches.
type fakeTarget struct {
	mu  sync.Mutex
	tap engine.Tap
	set int
}

func (f *fakeTarget) SetTap(t engine.Tap) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tap = t
	f.set++
}

func (f *fakeTarget) current() engine.Tap {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tap
}

func TestRingKeepsOrderAcrossWrapsAndRefusesWhenFull(t *testing.T) {
	r := newRing(4096)
	next, want := 0, 0
	pkt := func(n int) *engine.TapPacket {
		d := bytes.Repeat([]byte{byte(n)}, 50+n%300)
		return &engine.TapPacket{Point: engine.Point(n % 3), Reason: engine.DropReason(n % 5), Peer: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}), uint16(n)), Data: d}
	}
	check := func(rec *Record) bool {
		p := pkt(want)
		if rec.Time != int64(want) || rec.Point != p.Point || rec.Reason != p.Reason || rec.Peer != p.Peer || !bytes.Equal(rec.Data, p.Data[:min(len(p.Data), 200)]) || rec.Length != len(p.Data) {
			t.Fatalf("record %d: %+v", want, rec)
		}
		want++
		return true
	}
	for round := 0; round < 50; round++ {
		for r.push(int64(next), pkt(next), 200) {
			next++
		}
		if r.drain(check) == 0 {
			t.Fatal("a full ring drained nothing")
		}
	}
	if want != next || next < 500 {
		t.Fatalf("pushed %d, read %d", next, want)
	}
	// A second producer arriving while one pushes is refused, not raced.
	r.busy.Store(true)
	if r.push(0, pkt(1), 200) {
		t.Fatal("push succeeded while the ring was claimed")
	}
}

func TestHubMatchesAndCopiesWithoutAllocating(t *testing.T) {
	ft := &fakeTarget{}
	h := NewHub(ft)
	f, _ := ParseFilter("tcp and dst port 80")
	c, err := h.Start(Options{Filter: f, Queue: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	hit := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv4(6, "10.5.1.2", "10.5.2.3", 4000, 80)}
	miss := &engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv4(17, "10.5.1.2", "10.5.2.3", 4000, 80)}
	if a := testing.AllocsPerRun(1000, func() { h.Capture(hit); h.Capture(miss) }); a != 0 {
		t.Errorf("%v allocations per packet", a)
	}
	n := c.rings[1].drain(func(*Record) bool { return true })
	if n != 1001 {
		t.Errorf("queued %d packets, want 1001 (only the TCP ones)", n)
	}
}

func TestFanOutAndDetach(t *testing.T) {
	ft := &fakeTarget{}
	h := NewHub(ft)
	fa, _ := ParseFilter("tcp")
	a, _ := h.Start(Options{Filter: fa})
	b, _ := h.Start(Options{Points: 1 << engine.PointDrop})
	if ft.current() != h {
		t.Fatal("hub not attached while captures run")
	}
	h.Capture(&engine.TapPacket{Point: engine.PointFromTUN, FromTUN: true, Data: ipv4(6, "10.5.1.2", "10.5.2.3", 1, 2)})
	h.Capture(&engine.TapPacket{Point: engine.PointDrop, Reason: engine.DropNoRoute, FromTUN: true, Data: ipv4(17, "10.5.1.2", "10.9.2.3", 1, 2)})
	a.Stop()
	if ft.current() != h {
		t.Fatal("hub detached while a capture still runs")
	}
	b.Stop()
	if ft.current() != nil {
		t.Fatal("hub still attached after the last capture stopped")
	}
	count := func(c *Capture) (n int) {
		c.Read(context.Background(), func(*Record) error { n++; return nil }, nil)
		return n
	}
	if na, nb := count(a), count(b); na != 1 || nb != 1 {
		t.Errorf("captures got %d and %d packets, want 1 each", na, nb)
	}
}

func TestSlowReaderOverflowsInsteadOfBlocking(t *testing.T) {
	h := NewHub(&fakeTarget{})
	c, _ := h.Start(Options{Queue: minQueue})
	p := &engine.TapPacket{Point: engine.PointToTUN, Data: make([]byte, 1400)}
	done := make(chan struct{})
	go func() {
		for i := 0; i < 10000; i++ {
			h.Capture(p)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the data path blocked on a capture nobody reads")
	}
	c.Stop()
	n := 0
	c.Read(context.Background(), func(*Record) error { n++; return nil }, nil)
	s := c.Stats()
	if s.Overflow[engine.PointToTUN] == 0 || uint64(n)+s.TotalOverflow() != 10000 || s.TotalCaptured() != uint64(n) {
		t.Errorf("read %d, stats %+v: want overflow > 0 and read + overflow = 10000", n, s)
	}
	if !strings.Contains(s.Summary(), "lost to a full capture queue") {
		t.Error(s.Summary())
	}
}

// twoEngines forwards between 10.5.1.0/24 (a, at 192.0.2.1) and
// 10.5.2.0/24 (b, at 192.0.2.2) over the fake underlay.
func twoEngines(t *testing.T) (a, b *engine.Engine, da, db *enginetest.Device, nw *enginetest.Network) {
	nw = enginetest.NewNetwork()
	network := netip.MustParsePrefix("10.5.0.0/16")
	mk := func(own, other string, me, peer string) (*engine.Engine, *enginetest.Device) {
		d := enginetest.NewDevice()
		e, err := engine.New(d, nw.Listen(netip.MustParseAddrPort(me)), engine.Config{MTU: 1472, AntiSpoof: true})
		if err != nil {
			t.Fatal(err)
		}
		tab, err := engine.NewTable(network, 24, netip.MustParsePrefix(own),
			[]engine.PeerSpec{{Subnet: netip.MustParsePrefix(other), Endpoint: netip.MustParseAddrPort(peer)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.SetTable(tab)
		return e, d
	}
	a, da = mk("10.5.1.0/24", "10.5.2.0/24", "192.0.2.1:8285", "192.0.2.2:8285")
	b, db = mk("10.5.2.0/24", "10.5.1.0/24", "192.0.2.2:8285", "192.0.2.1:8285")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, e := range []*engine.Engine{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); e.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, b, da, db, nw
}

func TestCaptureOverHTTPIsPcapng(t *testing.T) {
	a, _, da, db, nw := twoEngines(t)
	h := NewHub(a)
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	if resp, _ := http.Get(srv.URL + "/capture?filter=tcp+bogus"); resp == nil || resp.StatusCode != 400 {
		t.Fatalf("a bad filter was not refused: %v", resp)
	} else if body, _ := io.ReadAll(resp.Body); !strings.Contains(string(body), `"bogus"`) {
		t.Fatalf("refusal does not name the token: %s", body)
	}

	resp, err := http.Get(srv.URL + "/capture?" + Params{Points: "from-tun,to-tun,drop"}.Query())
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ContentType {
		t.Fatalf("%v %v", resp, err)
	}
	defer resp.Body.Close()
	start := time.Now()
	// from a's TUN to b; b's reply-like packet back; a spoofed datagram to a.
	da.Inject(ipv4(17, "10.5.1.2", "10.5.2.3", 1000, 2000))
	<-db.Written
	db.Inject(ipv4(17, "10.5.2.3", "10.5.1.2", 2000, 1000))
	<-da.Written
	nw.Send(netip.MustParseAddrPort("192.0.2.2:8285"), netip.MustParseAddrPort("192.0.2.1:8285"), ipv4(17, "10.6.9.9", "10.5.1.2", 1, 1))

	r, err := pcapgo.NewNgReader(resp.Body, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeIPv4 {
		t.Fatalf("link type %v", r.LinkType())
	}
	var got []string
	for len(got) < 5 {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		intf, _ := r.Interface(ci.InterfaceIndex)
		if ci.Timestamp.Before(start.Add(-time.Second)) || ci.Timestamp.After(time.Now()) || ci.Length != 40 || len(data) != 40 {
			t.Errorf("packet %v: timestamp %v, length %d/%d", got, ci.Timestamp, ci.CaptureLength, ci.Length)
		}
		got = append(got, intf.Name+": "+strings.Join(opts.Comments, ";"))
		if len(got) == 3 {
			id := resp.Header.Get(HeaderID)
			// The stop arrives while the stream is open; what is queued still comes.
			da.Inject(ipv4(17, "10.5.1.2", "10.9.9.9", 1, 1)) // no route: a drop on the TUN side
			time.Sleep(50 * time.Millisecond)
			if r, err := http.Post(srv.URL+"/capture/stop?id="+id, "", nil); err != nil || r.StatusCode != 204 {
				t.Fatalf("stop: %v %v", r, err)
			}
		}
	}
	want := []string{
		"from-tun: from-tun",
		"to-tun: to-tun peer 192.0.2.2:8285",
		"drop: drop reason=spoofed-source peer 192.0.2.2:8285",
		"from-tun: from-tun",
		"drop: drop reason=no-route",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("packets:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, _, err := r.ReadPacketData(); err != io.EOF {
		t.Errorf("after the stop: %v, want EOF", err)
	}
	if r.NInterfaces() != 3 {
		t.Errorf("%d interfaces, want 3", r.NInterfaces())
	}
	if resp.Trailer.Get(TrailerCount) != "5" || resp.Trailer.Get(TrailerLost) != "0" {
		t.Errorf("trailers %v", resp.Trailer)
	}
	if h.Active() != 0 {
		t.Error("capture still active after its stream ended")
	}
}

func TestDrainMergedIsInTimeOrder(t *testing.T) {
	a, b := newRing(1<<16), newRing(1<<16)
	p := &engine.TapPacket{Data: ipv4(17, "10.5.1.2", "10.5.2.3", 1, 2)}
	for ts := int64(1); ts <= 100; ts++ {
		r := a
		if ts%3 == 0 || ts%7 == 0 {
			r = b
		}
		r.push(ts, p, 100)
	}
	var got []int64
	drainMerged(a, b, func(r *Record) bool { got = append(got, r.Time); return true })
	for i, ts := range got {
		if ts != int64(i+1) {
			t.Fatalf("out of order: %v", got)
		}
	}
	if len(got) != 100 {
		t.Fatalf("%d records, want 100", len(got))
	}
}

// -c and --duration are enforced by the daemon, so the stream ends with
// its statistics and trailers.
func TestCountAndDurationEndTheStream(t *testing.T) {
	h := NewHub(&fakeTarget{})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	start := time.Now()
	resp, err := http.Get(srv.URL + "/capture?" + Params{Duration: 200 * time.Millisecond}.Query())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Stream(resp, io.Discard)
	if err != nil || !res.Complete || res.Captured != 0 || time.Since(start) < 200*time.Millisecond {
		t.Errorf("duration: %+v %v after %v", res, err, time.Since(start))
	}

	resp, err = http.Get(srv.URL + "/capture?" + Params{Count: 3, Filter: "udp"}.Query())
	if err != nil {
		t.Fatal(err)
	}
	for h.Active() == 0 {
		time.Sleep(time.Millisecond)
	}
	go func() {
		for i := 0; i < 10; i++ {
			h.Capture(&engine.TapPacket{Point: engine.PointToTUN, Data: ipv4(6, "10.5.2.3", "10.5.1.2", 1, 2)})
			h.Capture(&engine.TapPacket{Point: engine.PointToTUN, Data: ipv4(17, "10.5.2.3", "10.5.1.2", 1, 2)})
		}
	}()
	var buf bytes.Buffer
	res, err = Stream(resp, &buf)
	if err != nil || !res.Complete || res.Captured != 3 {
		t.Fatalf("count: %+v %v", res, err)
	}
	r, err := pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, _, err := r.ReadPacketData(); err != nil {
			break
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d packets in the stream, want 3", n)
	}
}

// TestWriterOptionsFit16Bits: a pcapng option's length is 16 bits; a
// longer filter string must not make the file unreadable.
func TestWriterOptionsFit16Bits(t *testing.T) {
	for _, filter := range []string{strings.Repeat("x", 70000), strings.Repeat("é", 40000), strings.Repeat("y", 65535)} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, filter, 100, false)
		if err != nil {
			t.Fatal(err)
		}
		data := ipv4(17, "10.5.1.2", "10.5.2.3", 1, 2)
		if err := w.Write(&Record{Time: 1, Point: engine.PointToTUN, Length: len(data), Data: data}); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(Stats{}); err != nil {
			t.Fatal(err)
		}
		r, err := pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			t.Fatalf("%d-byte filter: %v", len(filter), err)
		}
		got, _, err := r.ReadPacketData()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d-byte filter: packet %x, %v", len(filter), got, err)
		}
	}
	if s := fitOption(strings.Repeat("é", 10), 5); s != "éé" {
		t.Errorf("fitOption cut a character: %q", s)
	}
}
