package harness

import (
	"fmt"
	"strconv"
	"strings"
)

// snmpCounter reads one counter of /proc/net/snmp, whose protocols come
// as two lines each: "Udp: InDatagrams NoPorts ..." naming the fields,
// then "Udp: 1 2 ..." with their values.
func snmpCounter(text, proto, field string) (int64, error) {
	prefix := proto + ":"
	var names []string
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != prefix {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		for i, n := range names {
			if n == field && i+1 < len(f) {
				return strconv.ParseInt(f[i+1], 10, 64)
			}
		}
		break
	}
	return 0, fmt.Errorf("/proc/net/snmp has no %s %s", proto, field)
}

// snmp6Counter reads one counter of /proc/net/snmp6: a name and a value
// per line.
func snmp6Counter(text, field string) (int64, error) {
	for line := range strings.SplitSeq(text, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == field {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/net/snmp6 has no %s", field)
}
