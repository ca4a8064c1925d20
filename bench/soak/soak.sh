#!/usr/bin/env bash
# make soak: the long versions of issue 9's fault tests (WEFT_SOAK=1):
# 6 kill -9 restarts under a verified transfer, a 60 s etcd outage, a
# 60 s partition past the lease TTL, 200 lease events/s for 60 s, 60 s of
# overload, 400 000 hostile datagrams. Needs root. The figures go to
# bench/soak/latest.txt (copy them into docs/reliability.md with the
# date); the full log to bench/soak/log.txt (not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
tests='^(TestRestartUnderTraffic|TestKernelRestartKeepsForwarding|TestEtcdOutage|TestEtcdPartitionLongerThanTTL|TestPeerChurn|TestOverload|TestHostileInput)$'
{
	echo "# make soak, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
	WEFT_SOAK=1 CI=true ${GO:-go} test -count=1 -timeout 60m -v -run "$tests" ./cmd/weft/ >bench/soak/log.txt 2>&1 && rc=0 || rc=$?
	grep -E 'FIGURE|^(--- |ok|FAIL|PASS)' bench/soak/log.txt | sed -E 's/^ +//'
	exit $rc
} | tee bench/soak/latest.txt
