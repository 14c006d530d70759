#!/usr/bin/env bash
# Installs what building and testing airavata needs on a Debian 12 machine:
# the compiler toolchain and C libraries from Debian, and the Python test
# tools (pytest and friends) into the virtual environment .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(build-essential cmake pkg-config libjansson-dev libmicrohttpd-dev
                 libcurl4-openssl-dev libssl-dev python3 python3-venv
                 chromium chromium-driver fonts-noto-core wrk)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating the Python virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import pytest" 2>/dev/null ||
   ! cmp -s scripts/requirements-test.txt .venv/.requirements-installed; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r scripts/requirements-test.txt
    cp scripts/requirements-test.txt .venv/.requirements-installed
fi
