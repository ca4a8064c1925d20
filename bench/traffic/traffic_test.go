package traffic

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func startServer(t *testing.T) string {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s.Addr().String()
}

func TestTCPBytesVerified(t *testing.T) {
	addr := startServer(t)
	for _, v := range []string{VerifyStream, VerifySHA256, VerifyNone} {
		// An odd total that does not divide evenly over the streams and
		// crosses the pattern period.
		const total = 3*patternPeriod + 12345
		res, err := RunTCP(context.Background(), TCPOptions{Addr: addr, Streams: 3, Bytes: total, Verify: v})
		if err != nil {
			t.Fatalf("verify %s: %v", v, err)
		}
		if res.Bytes != total || len(res.StreamBytes) != 3 || res.BitsPerSecond <= 0 || res.Verify != v {
			t.Fatalf("verify %s: %+v", v, res)
		}
	}
}

func TestTCPDuration(t *testing.T) {
	addr := startServer(t)
	res, err := RunTCP(context.Background(), TCPOptions{Addr: addr, Streams: 2, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes <= 0 || res.StreamBytes[0] <= 0 || res.StreamBytes[1] <= 0 {
		t.Fatalf("%+v", res)
	}
	b, _ := json.Marshal(res)
	if strings.Contains(string(b), "loss") || !strings.Contains(string(b), `"mode":"tcp"`) {
		t.Fatalf("JSON %s", b)
	}
}

// A stream that differs from what the hello promised is reported at the
// first wrong byte.
func TestTCPMismatchDetected(t *testing.T) {
	addr := startServer(t)
	for _, corrupt := range []int{0, 200000, patternPeriod + 7} {
		c, r, err := dial(context.Background(), addr, hello{Mode: "tcp", Seed: 42, Verify: VerifyStream})
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, patternPeriod+100000)
		copy(data, pattern(42)[:patternPeriod])
		copy(data[patternPeriod:], pattern(42)[:100000])
		data[corrupt] ^= 0x40
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		var res bulkResult
		if err := json.Unmarshal(line, &res); err != nil {
			t.Fatal(err)
		}
		want := "stream mismatch at byte " + itoa(corrupt)
		if res.Error != want || res.Bytes != int64(len(data)) {
			t.Fatalf("corrupt byte %d: server said %+v, want %q", corrupt, res, want)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestTCPBadOptions(t *testing.T) {
	for _, o := range []TCPOptions{{Addr: "x"}, {Addr: "x", Bytes: 1, Streams: 1000}, {Addr: "x", Bytes: 1, Verify: "md5"}} {
		if _, err := RunTCP(context.Background(), o); err == nil {
			t.Errorf("RunTCP(%+v) succeeded", o)
		}
	}
}

func TestUDP(t *testing.T) {
	addr := startServer(t)
	for _, o := range []UDPOptions{
		{Addr: addr, Size: 64, Rate: 2000, Duration: 300 * time.Millisecond},
		{Addr: addr, Size: 1400, Duration: 200 * time.Millisecond},
	} {
		res, err := RunUDP(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent <= 0 || res.Delivered <= 0 || res.Delivered > res.Sent || res.Loss == nil || *res.Loss < 0 || *res.Loss >= 1 {
			t.Fatalf("%+v", res)
		}
		if res.Bytes != res.Delivered*int64(o.Size) {
			t.Fatalf("bytes %d for %d datagrams of %d", res.Bytes, res.Delivered, o.Size)
		}
		if o.Rate > 0 && res.Sent > int64(float64(o.Rate)*res.Seconds)+sendBatch {
			t.Fatalf("rate %d/s for %.2fs sent %d", o.Rate, res.Seconds, res.Sent)
		}
	}
	if _, err := RunUDP(context.Background(), UDPOptions{Addr: addr, Size: 8}); err == nil {
		t.Fatal("8-byte payload accepted")
	}
}

func TestRR(t *testing.T) {
	addr := startServer(t)
	res, err := RunRR(context.Background(), RROptions{Addr: addr, Size: 32, Count: 200})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 200 || res.RTTMedianUs <= 0 || res.RTTP99Us < res.RTTMedianUs || res.RTTMinUs > res.RTTMedianUs {
		t.Fatalf("%+v", res)
	}
}

func TestNoServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	s.Close()
	if _, err := RunRR(ctx, RROptions{Addr: addr, Count: 1}); err == nil {
		t.Fatal("RunRR with no server succeeded")
	}
}
