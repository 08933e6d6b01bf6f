#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh) and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo test --workspace --no-fail-fast
