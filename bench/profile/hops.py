#!/usr/bin/env python3
"""hops.py H1.pcap POD TUN UNDERLAY H2.pcap POD TUN UNDERLAY: the median
time a TCP segment spends in each hop of the tunnel, both directions.
Arguments are each host's capture (tcpdump -i any: LINUX_SLL2) and the
interface indexes of its pod veth, TUN and underlay in its namespace."""
import statistics, struct, sys

OUT, IN = 4, 0  # SLL2 packet types: outgoing, to this host

def read(fn):
    f = open(fn, 'rb')
    assert struct.unpack('<I', f.read(24)[20:24])[0] == 276, 'want tcpdump -i any (LINUX_SLL2)'
    recs = []
    while len(h := f.read(16)) == 16:
        sec, usec, incl, _ = struct.unpack('<IIII', h)
        d = f.read(incl)
        ifindex, pkttype = struct.unpack('>I', d[4:8])[0], d[10]
        ip = d[20:]
        if len(ip) < 20 or ip[0] >> 4 != 4: continue
        inner = ip[(ip[0] & 15) * 4 + 8:] if ip[9] == 17 else ip  # flannel UDP: the inner packet follows the UDP header
        if len(inner) < 40 or inner[9] != 6: continue
        tcp = inner[(inner[0] & 15) * 4:]
        key = (inner[12:20], tcp[0:12], tcp[13], inner[2:4])  # addresses, ports+seq+ack, flags, length
        recs.append((sec + usec / 1e6, ifindex, pkttype, key))
    return recs

def seen(recs, ifindex, pkttype):
    m = {}
    for t, i, p, k in recs:
        if i == ifindex and p == pkttype: m.setdefault(k, t)
    return m

a = sys.argv[1:]
hosts = [(read(a[0]), int(a[1]), int(a[2]), int(a[3])), (read(a[4]), int(a[5]), int(a[6]), int(a[7]))]
total = 0.0
for name, (s, r) in (('p1 -> p2', (hosts[0], hosts[1])), ('p2 -> p1', (hosts[1], hosts[0]))):
    (sr, spod, stun, sul), (rr, rpod, rtun, rul) = s, r
    points = [('pod veth in', seen(sr, spod, IN)), ('TUN out', seen(sr, stun, OUT)), ('underlay out', seen(sr, sul, OUT)),
              ('underlay in', seen(rr, rul, IN)), ('TUN in', seen(rr, rtun, IN)), ('pod veth out', seen(rr, rpod, OUT))]
    print(name)
    for (an, am), (bn, bm) in zip(points, points[1:]):
        d = sorted((bm[k] - am[k]) * 1e6 for k in am if k in bm and bm[k] >= am[k])
        if not d: continue
        med = statistics.median(d)
        total += med
        print(f'  {an:>12s} -> {bn:<12s} median {med:6.1f} us  p90 {d[int(len(d) * .9)]:6.1f} us  ({len(d)} segments)')
print(f'sum of medians over both directions: {total:.1f} us (the rest of a round trip is the two applications)')
