#!/bin/bash
# A bare two-host lab for profiling and A/B runs by hand (the bench does
# the same with more care): namespaces pf-sw (bridge), pf-h1/pf-h2 (hosts,
# underlay 192.0.2.2-3), pf-p1/pf-p2 (pods 10.6.1.2 and 10.6.2.2), one
# `weft run` per host with static peers, and a traffic server in pf-p2.
#
#   bench/twohost.sh up [extra weft run flags]     e.g. --no-udp-gro
#   ip netns exec pf-p1 bin/weft traffic tcp --to 10.6.2.2 --duration 4s --verify none
#   bench/twohost.sh down
#   bench/twohost.sh up-vxlan        the same lab over kernel vxlan (as flanneld sets it up), no weft
set -e
D=${DIR:-/tmp/weft-twohost}
W=${WEFT:-$(cd "$(dirname "$0")/.." && pwd)/bin/weft}
P=${PREFIX:-pf}   # namespaces and links: PREFIX-sw, PREFIX-h1, ... (another name beside a lab of the same machine)
mode=$1
case $1 in
up|up-vxlan)
shift
mkdir -p $D
for n in sw h1 h2 p1 p2; do ip netns add $P-$n; ip -n $P-$n link set lo up; done
ip -n $P-sw link add br0 type bridge; ip -n $P-sw link set br0 up
for i in 1 2; do
  ip link add $P-u$i netns $P-h$i type veth peer name $P-s$i netns $P-sw
  ip -n $P-sw link set $P-s$i master br0 up
  ip -n $P-h$i addr add 192.0.2.$((i+1))/24 dev $P-u$i; ip -n $P-h$i link set $P-u$i up
  ip link add $P-v$i netns $P-h$i type veth peer name eth0 netns $P-p$i
  ip -n $P-h$i addr add 10.6.$i.1/24 dev $P-v$i; ip -n $P-h$i link set $P-v$i up
  ip -n $P-p$i addr add 10.6.$i.2/24 dev eth0; ip -n $P-p$i link set eth0 up mtu 1472
  ip -n $P-p$i route add default via 10.6.$i.1
  ip netns exec $P-h$i sysctl -qw net.ipv4.ip_forward=1
done
if [ $mode = up-vxlan ]; then
  # flanneld's vxlan backend: VNI 1, port 8472, /32 on flannel.1, onlink
  # route to the peer's .0 with a permanent neighbour and FDB entry.
  for i in 1 2; do
    ip -n $P-h$i link add flannel.1 address 0e:00:00:00:00:0$i type vxlan id 1 local 192.0.2.$((i+1)) dev $P-u$i dstport 8472 nolearning
    ip -n $P-h$i link set flannel.1 mtu 1450 up
    ip -n $P-h$i addr add 10.6.$i.0/32 dev flannel.1
    ip -n $P-p$i link set eth0 mtu 1450
  done
  for i in 1 2; do
    j=$((3-i))
    ip -n $P-h$i route add 10.6.$j.0/24 via 10.6.$j.0 dev flannel.1 onlink
    ip -n $P-h$i neigh add 10.6.$j.0 lladdr 0e:00:00:00:00:0$j dev flannel.1 nud permanent
    bridge -n $P-h$i fdb append 0e:00:00:00:00:0$j dev flannel.1 dst 192.0.2.$((j+1))
  done
else
ip netns exec $P-h1 $W run --iface $P-u1 --static-network 10.6.0.0/16 --static-subnet 10.6.1.0/24 --static-peer 10.6.2.0/24=192.0.2.3 --subnet-file $D/h1.env --debug-socket $D/h1.sock --iptables-forward-rules=false "$@" >$D/h1.log 2>&1 &
ip netns exec $P-h2 $W run --iface $P-u2 --static-network 10.6.0.0/16 --static-subnet 10.6.2.0/24 --static-peer 10.6.1.0/24=192.0.2.2 --subnet-file $D/h2.env --debug-socket $D/h2.sock --iptables-forward-rules=false "$@" >$D/h2.log 2>&1 &
fi
sleep 1
ip netns exec $P-p2 $W traffic server >$D/srv.log 2>&1 &
sleep 0.5
;;
down)
# Only what runs in this lab's namespaces: a pattern like "weft traffic
# server" also hits the bench's and the tests' servers on the same machine.
for n in p1 p2 h1 h2 sw; do ip netns pids $P-$n 2>/dev/null | xargs -r kill 2>/dev/null || true; done
sleep 0.5
for n in sw h1 h2 p1 p2; do ip netns del $P-$n 2>/dev/null || true; done
rm -f $D/*.env $D/*.sock
;;
esac
