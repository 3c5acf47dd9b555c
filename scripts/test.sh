#!/usr/bin/env bash
# The project's test command (README, .ci/run): sets up what is missing
# (scripts/setup.sh), then checks formatting, builds the example plugins
# (Rust, and Python and JavaScript with scripts/build-guests.sh), lints,
# builds and runs every test, including the end-to-end suite against
# real mosquitto and tansu brokers.
#
# An existing CARGO_TARGET_DIR is respected for the root workspace. The plugins
# always build into plugins/target/, where pipelines and tests look for them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

started=$SECONDS
section() {
    printf '\n==== %s  (+%ss) ====\n' "$*" "$((SECONDS - started))"
}

section "set-up: rust target, mosquitto, tansu, prometheus, componentize-py, componentize-js, the benchmark's baselines"
# shellcheck source=scripts/setup.sh
# `bench`: everything, plus what the benchmark's baselines need, because
# bench/tests/smoke.rs runs every case of the benchmark.
source "$ROOT/scripts/setup.sh" bench

section "cargo fmt --check"
cargo fmt --all --check
if [ -f plugins/Cargo.toml ]; then
    cargo fmt --all --check --manifest-path plugins/Cargo.toml
fi

if [ -f plugins/Cargo.toml ]; then
    section "build plugins (wasm32-wasip2, release)"
    (cd plugins && cargo build --release --target wasm32-wasip2 --target-dir "$ROOT/plugins/target")

    section "plugin unit tests (host target)"
    (cd plugins && cargo test --target x86_64-unknown-linux-gnu --target-dir "$ROOT/plugins/target")
else
    section "no plugins/Cargo.toml: skipping the plugin build"
fi

section "build the Python and JavaScript example plugins"
bash scripts/build-guests.sh

section "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo build --workspace --bins"
cargo build --workspace --bins

section "cargo test --workspace"
cargo test --workspace

section "all checks passed"
