package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/weft-net/weft/bench/traffic"
)

// wholeSeconds is d for iperf3's and sockperf's -t and ping's -w, which
// take whole seconds: rounded, at least 1.
func wholeSeconds(d time.Duration) int {
	return int(max(1, math.Round(d.Seconds())))
}

// iperf3Client runs an iperf3 client (-J and args) from the path's client
// to its server and returns the JSON, retrying while the server is
// starting or still busy with the last test (iperf3 -s serves one test at
// a time, and every iperf3 workload shares the one server).
func (bl *benchLab) iperf3Client(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{"iperf3", "-c", bl.path.ServerIP.String(), "-J"}, args...)
	var out []byte
	var err error
	for try := 0; try < 10; try++ {
		out, err = bl.c.Lab.ExecContext(ctx, bl.path.ClientNS, argv...)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("iperf3: %w", err)
	}
	return out, nil
}

// iperf3 runs iperf3's TCP 1 stream client for d (whole seconds).
func (bl *benchLab) iperf3(ctx context.Context, d time.Duration) (*traffic.Result, error) {
	out, err := bl.iperf3Client(ctx, "-t", strconv.Itoa(wholeSeconds(d)))
	if err != nil {
		return nil, err
	}
	res, err := parseIperf3TCP(out)
	if err != nil {
		return nil, err
	}
	res.Target, res.Streams = bl.path.ServerIP.String(), 1
	return res, nil
}

// parseIperf3TCP reads a TCP test's JSON: what the receiver got.
func parseIperf3TCP(out []byte) (*traffic.Result, error) {
	var j struct {
		End struct {
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := decodeIperf3(out, &j, &j.Error); err != nil {
		return nil, err
	}
	r := j.End.SumReceived
	return &traffic.Result{Mode: "iperf3", Seconds: r.Seconds, Bytes: r.Bytes, BitsPerSecond: r.BitsPerSecond}, nil
}

// iperf3UDP64 runs `iperf3 -u -l 64 -b 0` (64-byte datagrams, flat out)
// for d (whole seconds). It also counts the datagrams the receiver's
// socket overflowed with, in the server's namespace (which holds no other
// UDP socket that receives meanwhile): what the path carried but the
// receiving iperf3 could not read. Without the counter the result still
// stands, without that figure.
func (bl *benchLab) iperf3UDP64(ctx context.Context, d time.Duration) (*traffic.Result, error) {
	v6 := bl.path.ServerIP.Is6()
	before, errBefore := bl.udpRcvbufErrors(ctx, v6)
	out, err := bl.iperf3Client(ctx, "-u", "-l", "64", "-b", "0", "-t", strconv.Itoa(wholeSeconds(d)))
	if err != nil {
		return nil, err
	}
	res, err := parseIperf3UDP(out)
	if err != nil {
		return nil, err
	}
	res.Target = bl.path.ServerIP.String()
	if after, errAfter := bl.udpRcvbufErrors(ctx, v6); errBefore == nil && errAfter == nil && after >= before {
		n := after - before
		res.ReceiverOverflows = &n
	}
	return res, nil
}

// udpRcvbufErrors reads the server namespace's count of UDP datagrams
// dropped for a full socket buffer (/proc/net/snmp's Udp RcvbufErrors, or
// snmp6's Udp6RcvbufErrors).
func (bl *benchLab) udpRcvbufErrors(ctx context.Context, v6 bool) (int64, error) {
	file := "/proc/net/snmp"
	if v6 {
		file = "/proc/net/snmp6"
	}
	out, err := bl.c.Lab.ExecContext(ctx, bl.path.ServerNS, "cat", file)
	if err != nil {
		return 0, err
	}
	if v6 {
		return snmp6Counter(string(out), "Udp6RcvbufErrors")
	}
	return snmpCounter(string(out), "Udp", "RcvbufErrors")
}

// iperf3UDP is one side's count of a UDP test in the client's JSON.
type iperf3UDP struct {
	Seconds     float64 `json:"seconds"`
	Bytes       int64   `json:"bytes"`
	Packets     int64   `json:"packets"`
	LostPackets int64   `json:"lost_packets"`
	Sender      bool    `json:"sender"`
}

// parseIperf3UDP reads a UDP test's JSON from the client. The figures are
// the receiver's: end.sum_received is the server's count, which the
// client gets at the end of the test ("sender": false). Its packets is
// the highest sequence number the receiver saw and lost_packets the gaps
// below it, so what arrived is their difference and the loss is their
// ratio, as the server prints it ("Lost/Total Datagrams"); datagrams sent
// after the last one that arrived count in neither (weft's udp64 counts
// loss against what was sent, so it counts those too). Its lost_percent
// is not used: iperf3 3.12 divides by the sender's count there. end.sum
// mixes the sides too; end.sum_sent is the sender's count.
func parseIperf3UDP(out []byte) (*traffic.Result, error) {
	var j struct {
		End struct {
			SumSent     *iperf3UDP `json:"sum_sent"`
			SumReceived *iperf3UDP `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := decodeIperf3(out, &j, &j.Error); err != nil {
		return nil, err
	}
	rx, tx := j.End.SumReceived, j.End.SumSent
	switch {
	case rx == nil || tx == nil:
		return nil, fmt.Errorf("iperf3: the JSON has no end.sum_received and end.sum_sent (iperf3 3.12 has them)")
	case rx.Sender || !tx.Sender:
		return nil, fmt.Errorf("iperf3: end.sum_received says sender %v, end.sum_sent %v", rx.Sender, tx.Sender)
	case rx.Seconds <= 0 || rx.Packets <= 0 || tx.Seconds <= 0:
		return nil, fmt.Errorf("iperf3: the receiver counted no datagrams")
	}
	delivered := rx.Packets - rx.LostPackets
	loss := float64(rx.LostPackets) / float64(rx.Packets)
	return &traffic.Result{Mode: "iperf3-udp", Seconds: rx.Seconds, Bytes: rx.Bytes, BitsPerSecond: float64(rx.Bytes) * 8 / rx.Seconds,
		PayloadSize: 64, Sent: tx.Packets, SentPPS: float64(tx.Packets) / tx.Seconds,
		Delivered: delivered, DeliveredPPS: float64(delivered) / rx.Seconds, Loss: &loss}, nil
}

// decodeIperf3 reads iperf3's JSON into j; iperf3 reports its own failure
// in the document's "error" field, which errField points at.
func decodeIperf3(out []byte, j any, errField *string) error {
	if err := json.Unmarshal(out, j); err != nil {
		return fmt.Errorf("iperf3: bad JSON: %w", err)
	}
	if *errField != "" {
		return fmt.Errorf("iperf3: %s", *errField)
	}
	return nil
}
