#!/usr/bin/env bash
# The full test suite (run as root: the network tests build namespaces and TAP devices).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ruff check src tests
mypy
exec python -m pytest -q -p no:cacheprovider "$@"
