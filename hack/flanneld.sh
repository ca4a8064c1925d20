#!/usr/bin/env bash
# Builds the pinned flanneld that the interop tests (test/e2e, mixed weft
# and flanneld clusters) run beside weft, from the Go module proxy, into a
# cache directory outside the repo. A no-op when the binary is already
# there. Prints the binary's path on stdout.
#
#   WEFT_FLANNEL_VERSION  flannel version (default v0.28.9, the recordings' version)
#   WEFT_FLANNELD         binary path (default
#                         ${WEFT_CI_CACHE:-/var/cache/weft-ci}/flanneld-$VERSION/flanneld)
#
# The module is flannel's own source, unchanged but for one thing: the
# proxy refuses github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc
# v1.3.149, which only the tencent-vpc backend imports, so that backend is
# left out of main.go. Every backend the tests use (udp, vxlan, host-gw)
# is flannel's. cgo is on: flannel's udp backend is written in C.
# Cost (2 busy cores): ~3 min with an empty build cache, 76 MB binary.
set -euo pipefail

version=${WEFT_FLANNEL_VERSION:-v0.28.9}
cache=${WEFT_CI_CACHE:-/var/cache/weft-ci}
bin=${WEFT_FLANNELD:-$cache/flanneld-$version/flanneld}

if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
export GOFLAGS=-mod=mod GOWORK=off
src=$(go mod download -json "github.com/flannel-io/flannel@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -n "$src" ] || { echo "cannot fetch github.com/flannel-io/flannel@$version" >&2; exit 1; }
dir=$(dirname "$bin")
mkdir -p "$dir"
rm -rf "$dir/src"
cp -r "$src" "$dir/src"
chmod -R u+w "$dir/src"
cd "$dir/src"
sed -i '/pkg\/backend\/tencentvpc"/d' main.go
rm -rf pkg/backend/tencentvpc
echo "building flanneld $version into $bin (~3 min)" >&2
go build -trimpath -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$version" -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
rm -rf "$dir/src"
echo "$bin"
