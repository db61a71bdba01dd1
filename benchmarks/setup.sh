#!/bin/sh
# Installs what `atls-proxy bench` needs besides atls-proxy itself, from Debian's packages:
#   wrk      the load generator for the plain-HTTP / plain-TLS peers (direct, off, haproxy);
#   haproxy  the TLS-terminating baseline (skipped, and said so, when absent);
#   taskset  (util-linux) to pin the proxy and the generator to separate cores;
# and matplotlib for `--png` charts (the `bench` extra of pyproject.toml).
# Debian or Ubuntu; run as root or with sudo available. Set SKIP_PIP=1 to leave Python alone.
set -eu

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "setup.sh: run as root, or install sudo" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: needs apt-get (Debian/Ubuntu); install haproxy and wrk by other means" >&2
    exit 2
fi

$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    haproxy wrk util-linux

if [ "${SKIP_PIP:-0}" != "1" ]; then
    python3 -m pip install 'matplotlib>=3.7'
fi

echo
echo "installed:"
haproxy -v | head -n 1
wrk -v 2>&1 | head -n 1 || true
python3 -c 'import matplotlib; print("matplotlib", matplotlib.__version__)' 2>/dev/null || true
echo
echo "now: atls-proxy bench --quick     (about 2 minutes on 2 cores)"
