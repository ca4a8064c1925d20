#!/bin/bash
# Interleaved A/B of --queues (issue 18 goal 5) on bench/twohost.sh's
# two-host lab, with standard tools and weft's own generator:
#
#   flock /tmp/weft-measure.lock bench/queues-ab.sh REPS NAME=BINARY[:FLAGS] ...
#   e.g. bench/queues-ab.sh 3 main=/tmp/weft-main head-q1=bin/weft:--queues=1 head-q2=bin/weft:--queues=2
#
# Per variant and repetition it builds the lab, runs iperf3 TCP 1 stream
# and -P 4 (5 s), iperf3 -u -l 64 -b 0 (5 s), ping -i 0.01 (300 echoes),
# weft traffic udp flat out (64 B, 4 s: delivered kpps / reordered
# datagrams), and prints one line: the rates,
# the engines' CPU (both weft processes, /proc utime+stime) per GB of the
# TCP runs and their peak RSS (VmHWM), then tears the lab down.
set -e
here=$(cd "$(dirname "$0")" && pwd)
reps=$1; shift
variants=("$@")
export PREFIX=${PREFIX:-mqab} DIR=${DIR:-/tmp/weft-queues-ab}
P=$PREFIX
cpu() { # jiffies of the weft processes in the host namespaces
  local t=0
  for n in h1 h2; do
    for p in $(ip netns pids $P-$n); do
      set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t + $1 + $2))
    done
  done
  echo $t
}
hwm() { # largest VmHWM of the weft processes, MiB
  local m=0
  for n in h1 h2; do
    for p in $(ip netns pids $P-$n); do
      k=$(awk '/VmHWM/ {print $2}' /proc/$p/status); [ "$k" -gt "$m" ] && m=$k
    done
  done
  echo $((m / 1024))
}
# iperf3 JSON -> "Gbit/s bytes" (TCP) or "kpps loss%" (UDP); an iperf3 that
# failed (its server still busy with the last test) is run again, up to 3
# times.
perf() {
  local kind=$1; shift
  for try in 1 2 3; do
    out=$(ip netns exec $P-p1 iperf3 -c 10.6.2.2 -J "$@" 2>/dev/null | python3 -c '
import json,sys
kind=sys.argv[1]
try:
    e=json.load(sys.stdin)["end"]
    if kind == "tcp":
        e=e["sum_received"]; print("%.2f %d" % (e["bits_per_second"]/1e9, e["bytes"]))
    else:
        e=e["sum"]; print("%.0f %.1f" % ((e["packets"]-e["lost_packets"])/e["seconds"]/1e3, e["lost_percent"]))
except Exception:
    sys.exit(1)' "$kind") && { echo "$out"; return; }
    sleep 1
  done
  echo "- 0"
}
hz=$(getconf CLK_TCK)
printf '%-8s %3s %8s %8s %8s %8s %8s %7s %7s %7s %12s %4s\n' variant rep tcp1 cpu/GB tcp4 cpu/GB udp64kpps loss% pingmed pingp99 weft64/reord RSS
for rep in $(seq 1 "$reps"); do
  for v in "${variants[@]}"; do
    name=${v%%=*}; rest=${v#*=}; bin=${rest%%:*}; flags=""
    [ "$rest" != "$bin" ] && flags=${rest#*:}
    WEFT=$bin "$here/twohost.sh" up ${flags//,/ } >/dev/null
    ip netns exec $P-p2 iperf3 -s >/dev/null 2>&1 &
    srv=$!
    sleep 1
    c0=$(cpu)
    tcp1=$(perf tcp -t 5)
    c1=$(cpu)
    tcp4=$(perf tcp -t 5 -P 4)
    c2=$(cpu)
    udp=$(perf udp -t 5 -u -l 64 -b 0)
    png=$(ip netns exec $P-p1 ping -i 0.01 -c 300 -W 1 10.6.2.2 | python3 -c '
import re,sys
t=sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
print("%.0f %.0f" % (t[len(t)//2]*1000, t[min(len(t)-1, int(len(t)*0.99))]*1000) if t else "- -")')
    w=$(ip netns exec $P-p1 "$bin" traffic udp --to 10.6.2.2 --size 64 --duration 4s 2>/dev/null | python3 -c '
import json,sys
r=json.load(sys.stdin); print("%.0f/%d" % (r.get("delivered_pps", 0)/1e3, r.get("reordered", 0)))' 2>/dev/null || echo -)
    mem=$(hwm)
    kill $srv 2>/dev/null || true
    "$here/twohost.sh" down >/dev/null 2>&1
    read -r t1 b1 <<<"$tcp1"
    read -r t4 b4 <<<"$tcp4"
    read -r u ul <<<"$udp"
    read -r pm p99 <<<"$png"
    printf '%-8s %3s %8s %8.2f %8s %8.2f %8s %7s %7s %7s %12s %4s\n' "$name" "$rep" "$t1" \
      "$(python3 -c "print(($c1-$c0)/$hz/($b1/1e9) if $b1 else 0)")" "$t4" "$(python3 -c "print(($c2-$c1)/$hz/($b4/1e9) if $b4 else 0)")" "$u" "$ul" "$pm" "$p99" "$w" "$mem"
  done
done
