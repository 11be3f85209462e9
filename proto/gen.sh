#!/usr/bin/env bash
# Regenerates the committed Go code from push.proto. Needs protoc (Debian's
# protobuf-compiler) and the two Go plugins at the versions pinned below; a
# normal build never runs this, the generated files are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null; then
  apt-get install -y protobuf-compiler
fi
GOBIN="$(go env GOPATH)/bin"
export PATH="$GOBIN:$PATH"
GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOFLAGS= go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
protoc -I proto \
  --go_out=proto --go_opt=paths=source_relative \
  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
  proto/push/v1/push.proto
