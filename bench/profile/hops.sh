#!/bin/bash
# Where a round trip's time goes, hop by hop: tcpdump on every interface
# of both hosts of bench/twohost.sh during `weft traffic rr`, then
# hops.py matches each inner TCP segment across the captures (one clock:
# all namespaces share the machine's).
#
#   bench/profile/hops.sh [weft run flags...]
#
# tcpdump's own work keeps the CPUs from idling between packets, so the
# round trip measured here is shorter than without it; read the hops'
# shares, and take the round trip itself from `weft bench`.
set -e
cd "$(dirname "$0")/../.."
out=/tmp/weft-profile/hops
mkdir -p $out
bench/twohost.sh up "$@" >/dev/null
trap 'pkill -f "tcpdump -i any -nn -w $out" || true; bench/twohost.sh down >/dev/null 2>&1' EXIT
for h in 1 2; do
	ip netns exec pf-h$h tcpdump -i any -nn -w $out/h$h.pcap -s 128 'tcp port 7575 or udp port 8285' 2>/dev/null &
done
sleep 1
ip netns exec pf-p1 bin/weft traffic rr --to 10.6.2.2 --duration 2s | grep -E 'rtt_(median|p99)'
sleep 0.5
pkill -f "tcpdump -i any -nn -w $out" || true
sleep 0.5
idx() { ip -n pf-h$1 -o link show "$2" | cut -d: -f1; }
python3 "$(dirname "$0")/hops.py" \
	$out/h1.pcap "$(idx 1 pf-v1)" "$(idx 1 flannel0)" "$(idx 1 pf-u1)" \
	$out/h2.pcap "$(idx 2 pf-v2)" "$(idx 2 flannel0)" "$(idx 2 pf-u2)"
