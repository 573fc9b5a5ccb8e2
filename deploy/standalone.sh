#!/usr/bin/env bash
# Runs a single-node Magnetar (broker + bookie + local metadata) from this checkout:
#   bash deploy/standalone.sh [--data-dir DIR] [--pulsar-port 6650] [--http-port 8080] ...
# Arguments go to `magnetar standalone`. Data lives in ./data of the repository by default.
# Builds the dev profile, the same one deploy/test.sh builds, so only one profile is compiled.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/system-packages.sh
source "$REPO/deploy/system-packages.sh"

require_cargo
if ! have_libclang_dev; then
    ensure_debian_packages libclang-dev
fi

cd "$REPO"
exec cargo run --locked --bin magnetar -- standalone "$@"
