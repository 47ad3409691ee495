#!/usr/bin/env bash
# Installs everything NaaS needs on a fresh Debian machine (run as root), into .venv.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

apt_packages=(
  python3 python3-venv python3-pip iproute2 iputils-ping nftables iptables conntrack
  udhcpc isc-dhcp-client iperf3 graphviz tcpdump procps kmod curl
  postgresql  # the PoP store on two machines; the tests run throwaway clusters (tests/pg.py)
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
export PATH="$here/.venv/bin:$PATH"
