#!/usr/bin/env bash
# Builds the pinned kube-apiserver that lease/kube's tests run against, from
# the Go module proxy, into a cache directory outside the repo. A no-op when
# the binary is already there. Prints the binary's path on stdout.
#
#   WEFT_KUBE_VERSION     kubernetes version (default v1.37.2)
#   WEFT_KUBE_APISERVER   binary path (default
#                         ${WEFT_CI_CACHE:-/var/cache/weft-ci}/kube-apiserver-$VERSION/kube-apiserver)
#   WEFT_KUBE_BUILD_JOBS  go build -p (default 1: the machine is shared)
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod
# replaces every k8s.io staging module with ./staging/src/..., which the
# module zip does not honour for a dependent. So a scratch module requires
# k8s.io/kubernetes and replaces each staging module listed in that replace
# block with the published v0.X.Y of the same release. The proxy refuses
# k8s.io/sample-cli-plugin and k8s.io/sample-controller; the API server
# needs neither, so they are left out.
# Cost (2 busy cores): ~13 min, peak ~2.4 GB RSS in the link, ~4 GB of Go
# build cache, 119 MB binary; with a warm cache a rebuild is a link.
set -euo pipefail

version=${WEFT_KUBE_VERSION:-v1.37.2}
cache=${WEFT_CI_CACHE:-/var/cache/weft-ci}
bin=${WEFT_KUBE_APISERVER:-$cache/kube-apiserver-$version/kube-apiserver}
jobs=${WEFT_KUBE_BUILD_JOBS:-1}

if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi

# Staging modules are published as v0.<minor>.<patch> for v1.<minor>.<patch>.
staging=v0.${version#v1.}
dir=$(dirname "$bin")
mod=$dir/src
mkdir -p "$mod"
echo "building kube-apiserver $version into $bin (~13 min on 2 busy cores)" >&2

export GOFLAGS=-mod=mod GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
cd "$mod"
rm -f go.mod go.sum
go mod init weft.invalid/kube-apiserver-build >/dev/null 2>&1
kmod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[ -n "$kmod" ] || { echo "cannot fetch k8s.io/kubernetes@$version go.mod" >&2; exit 1; }

args=(-require="k8s.io/kubernetes@$version")
for m in $(sed -n '/^replace (/,/^)/s#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$kmod"); do
	case $m in
	k8s.io/sample-cli-plugin | k8s.io/sample-controller) continue ;;
	esac
	args+=(-replace="$m=$m@$staging")
done
go mod edit "${args[@]}"
go mod download k8s.io/kubernetes
# Resolves the rest of the graph (go.sum included) for the one package.
go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" >&2

tmp=$bin.tmp.$$
trap 'rm -f "$tmp"' EXIT
# The version stamp kubernetes' own build sets (the API server reports it,
# and derives its default emulation version from it).
minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
nice -n 10 env GOMAXPROCS="$jobs" go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$tmp" "$bin"
echo "$bin"
