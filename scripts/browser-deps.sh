#!/usr/bin/env bash
# Installs what the browser tests (test/browser, web/test-browser) need and
# the Go toolchain does not bring: Debian's chromium (driven headless over
# the DevTools protocol; no browser is downloaded by npm) and playwright-core
# in web/node_modules. Safe to run again; does nothing when both are present.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "browser-deps: chromium missing; run as root or: sudo apt-get install -y chromium" >&2
    exit 1
  fi
  echo "browser-deps: installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -d web/node_modules/playwright-core ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "browser-deps: npm missing (install Node.js 20+)" >&2
    exit 1
  fi
  echo "browser-deps: installing playwright-core into web/node_modules" >&2
  # playwright-core never downloads a browser; the variable is belt and braces.
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ -f web/package-lock.json ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd web && npm install --no-audit --no-fund --loglevel=error)
  fi
fi
