#!/usr/bin/env bash
# Installs Debian's Chromium and its matching chromedriver for the browser tests (tests/browser/).
# Idempotent: does nothing when both binaries are already there. Debian packages are used because
# browser downloads (Playwright/Selenium Manager) cannot reach the internet here.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; then
    echo "install_browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) and chromedriver already installed"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install_browser: $CHROMIUM or $DRIVER is missing and this script needs root to install them." >&2
    echo "  run: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: apt-get not found; install Chromium and chromedriver by hand so that" >&2
    echo "  $CHROMIUM and $DRIVER exist (or point CPGD_CHROMIUM / CPGD_CHROMEDRIVER at them)." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver
"$CHROMIUM" --version
"$DRIVER" --version
