#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), checks formatting and lints (clippy, warnings as
# errors), and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
