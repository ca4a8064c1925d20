#!/bin/bash
# Profile one transfer through the two-host lab (bench/twohost.sh) and
# split the CPU by process and by kernel path (split.py): where weft's
# time goes per GB, next to kernel vxlan measured the same way.
#
#   bench/profile/profile.sh udp   NAME [STREAMS] [weft run flags...]
#   bench/profile/profile.sh vxlan NAME [STREAMS]
#   python3 bench/profile/split.py /tmp/weft-profile/NAME
#
# Needs root and perf (Debian: linux-perf). Moves 3 GB with
# `weft traffic tcp`; samples every CPU at 1999 Hz (cpu-clock: this VM has
# no hardware counters). Run it on a quiet machine: other work shows up
# as its own rows but still competes for the CPUs.
set -e
cd "$(dirname "$0")/../.."
mode=$1 name=$2 streams=${3:-1}
shift 3 || shift $#
out=/tmp/weft-profile/$name
mkdir -p "$out"
case $mode in
udp) bench/twohost.sh up "$@" >/dev/null ;;
vxlan) bench/twohost.sh up-vxlan >/dev/null ;;
*) echo "usage: $0 udp|vxlan NAME [STREAMS] [weft run flags]" >&2; exit 2 ;;
esac
trap 'bench/twohost.sh down >/dev/null 2>&1' EXIT
ip netns exec pf-p1 bin/weft traffic tcp --to 10.6.2.2 --duration 1s --verify none >/dev/null # warm up
pgrep -f "weft run --iface pf-" >"$out/engine.pids" || true
pgrep -f "weft traffic server" >"$out/server.pids"
perf record -q -e cpu-clock -F 1999 -a -g -o "$out/perf.data" -- \
	ip netns exec pf-p1 bin/weft traffic tcp --to 10.6.2.2 --bytes 3000000000 --streams "$streams" --verify none >"$out/result.json"
grep bits_per_second "$out/result.json"
