#!/usr/bin/env bash
# Installs the Centrifugo server that `pushbench peers` and `pushbench sweep`
# run beside the edge: bin/centrifugo, built from the Go module proxy with
#   go install github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION
# (GOBIN=bin), with the version stamped as Centrifugo's release builds do
# (`centrifugo version`; usage-stats endpoint left empty, so it reports
# nothing anywhere). Safe to run again: does nothing when bin/centrifugo
# was already built from that module version (`go version -m`) and
# stamped with it.
# CENTRIFUGO_VERSION (default v6.9.1) and BIN (default bin) override the
# defaults. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${CENTRIFUGO_VERSION:-v6.9.1}"
bin="${BIN:-bin}"
mkdir -p "$bin"
bin="$(cd "$bin" && pwd)"
built() { go version -m "$bin/centrifugo" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/centrifugal/centrifugo/v6" { print $3 }'; }
stamped() { "$bin/centrifugo" version 2>/dev/null | grep -qF "Centrifugo $version "; }
if [ -x "$bin/centrifugo" ] && [ "$(built)" = "$version" ] && stamped; then
  echo "$bin/centrifugo"
  exit 0
fi
echo "centrifugo: installing github.com/centrifugal/centrifugo/v6@$version into $bin (a few minutes the first time)" >&2
# The module's own go.mod governs the build (go install pkg@version
# ignores this repository's go.mod); GOFLAGS from the environment could
# break that, so they are cleared.
GOFLAGS= GOBIN="$bin" go install \
  -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=${version#v}" \
  "github.com/centrifugal/centrifugo/v6@$version"
if [ "$(built)" != "$version" ] || ! stamped; then
  echo "centrifugo: $bin/centrifugo was built from '$(built)', want $version" >&2
  exit 1
fi
echo "$bin/centrifugo"
