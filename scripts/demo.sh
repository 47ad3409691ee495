#!/usr/bin/env bash
# The whole user story in network namespaces: `naas demo` (run as root).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec naas demo "$@"
