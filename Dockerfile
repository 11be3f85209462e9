# syntax=docker/dockerfile:1
# One image, every binary: edge, router and pushctl in /usr/local/bin
# (the manifests in deploy/k8s pick one with `command`), pushbench in the
# "bench" target. Static, no shell, non-root.
#
#   docker build -t ghcr.io/pushcluster/push:v0.1.0 .
#   docker build --target bench -t ghcr.io/pushcluster/push-bench:v0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-trixie AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
# Modules first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO off: fully static binaries that run on distroless/static. -trimpath
# and the build ID pinned make the image reproducible from the same tree.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w -buildid=" -o /out/ ./cmd/... ./bench/cmd/pushbench

# distroless/static: CA certificates, /etc/passwd with the nonroot user,
# tzdata; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /out/edge /out/router /out/pushctl /usr/local/bin/
# 65532 is distroless' "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# WebSocket, gRPC and admin ports of the edge and of the router.
EXPOSE 8080 9090 9100 8000 9000 9001
ENTRYPOINT ["/usr/local/bin/edge"]

FROM runtime AS bench
COPY --from=build /out/pushbench /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/pushbench"]

# The default target is the one the manifests run.
FROM runtime
