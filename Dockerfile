# weft's container image, a drop-in for flannel's in kube-flannel.yml:
# /opt/bin/flanneld (weft run under flanneld's name), /opt/bin/install-conf
# (the install-cni init container's copy of the CNI config) and
# /opt/bin/weft, with the iptables and nft binaries the firewall rules need
# (and cp, which older kube-flannel.yml releases' install-cni runs). Build:
#
#   docker build -t weft:dev .          # or: podman build -t weft:dev .
#
# The root filesystem it adds is `make rootfs DIR=...`, tested without a
# container runtime (cmd/weft/rootfs_test.go). It has no flannel CNI
# plugin: kube-flannel.yml installs that from its own image
# (flannel-cni-plugin), which stays as it is. See docs/moving-from-flanneld.md.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=
RUN make rootfs DIR=/rootfs $(test -n "$VERSION" && echo VERSION=$VERSION)

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /rootfs/ /
ENTRYPOINT ["/opt/bin/flanneld"]
