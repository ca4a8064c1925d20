package harness

import (
	"os"
	"testing"
)

// The counters are read from the files' real layout, and a missing one
// is an error, not a zero.
func TestSNMPCounters(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\n" +
		"Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n" +
		"Udp: 1015666 0 156094 12 156094 0 0 0 0\n" +
		"UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n" +
		"UdpLite: 0 0 0 0 7 0 0 0 0\n"
	if n, err := snmpCounter(snmp, "Udp", "RcvbufErrors"); err != nil || n != 156094 {
		t.Errorf("Udp RcvbufErrors = %d, %v", n, err)
	}
	if n, err := snmpCounter(snmp, "UdpLite", "RcvbufErrors"); err != nil || n != 7 {
		t.Errorf("UdpLite RcvbufErrors = %d, %v", n, err)
	}
	if _, err := snmpCounter(snmp, "Udp", "NoSuchField"); err == nil {
		t.Error("a missing field read as a value")
	}
	if _, err := snmpCounter("Udp: RcvbufErrors\n", "Udp", "RcvbufErrors"); err == nil {
		t.Error("a header without values read as a value")
	}
	snmp6 := "Udp6InDatagrams                 	12\nUdp6RcvbufErrors                	34\n"
	if n, err := snmp6Counter(snmp6, "Udp6RcvbufErrors"); err != nil || n != 34 {
		t.Errorf("Udp6RcvbufErrors = %d, %v", n, err)
	}
	if _, err := snmp6Counter(snmp6, "Udp6NoSuch"); err == nil {
		t.Error("a missing snmp6 field read as a value")
	}
	// This machine's own files parse.
	for _, c := range []struct {
		file string
		read func(string) (int64, error)
	}{
		{"/proc/net/snmp", func(s string) (int64, error) { return snmpCounter(s, "Udp", "RcvbufErrors") }},
		{"/proc/net/snmp6", func(s string) (int64, error) { return snmp6Counter(s, "Udp6RcvbufErrors") }},
	} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.read(string(b)); err != nil {
			t.Errorf("%s: %v", c.file, err)
		}
	}
}
