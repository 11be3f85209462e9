#!/usr/bin/env bash
# Installs what scenario h of the fault suite needs to cut traffic inside a
# network namespace: ip (iproute2) and nft (nftables), from Debian's
# packages, when they are missing. Needs root; does nothing otherwise.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "netns-deps: not root, cannot install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
  apt-get update >/dev/null 2>&1
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
}
