#!/usr/bin/env bash
# The end-to-end benchmark (issue 6): builds the example plugins, sluice and
# sluice-bench in release mode, then runs every case on one mosquitto and one
# tansu started on free loopback ports:
#
#   (a)  broker ceiling: mosquitto_sub -q 1 -C N > /dev/null
#   (b1) hand-written bridge: mosquitto_sub -q 1 -v | sluice-bench produce
#   (b2) Python bridge: bench/bridge.py (paho-mqtt + confluent-kafka)
#   (c)  sluice at-most-once, no transform
#   (d)  sluice at-least-once, no transform
#   (e)  sluice at-least-once, json-map (Wasm)
#   (f)  sluice at-least-once, json-map -> json-filter -> json-map
#
# It writes results.json, results.md and results.svg to <target>/bench/ and
# prints the table. docs/benchmarks.md explains the cases and the figures.
#
#   bash scripts/bench.sh                           # 100k messages per case, flat out
#   bash scripts/bench.sh --messages 20000 --cases a,b1,e
#   bash scripts/bench.sh --rate 2000               # fixed publish rate (latency)
#   bash scripts/bench.sh -n 200000 --rounds 3      # three rounds: median rows, less noise
#   bash scripts/bench.sh --micro                   # first the criterion micro-benchmarks
#
# Every argument except --micro goes to `sluice-bench run` (see
# `target/release/sluice-bench run --help`). Like scripts/test.sh it sets up
# what is missing (scripts/setup.sh bench: brokers, mosquitto-clients, a
# Python venv with paho-mqtt and confluent-kafka). An existing
# CARGO_TARGET_DIR is respected.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

micro=""
args=()
for arg in "$@"; do
    case "$arg" in
        --micro) micro=1 ;;
        *) args+=("$arg") ;;
    esac
done

# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" bench

echo "==== build plugins (wasm32-wasip2, release)"
(cd plugins && cargo build --release --target wasm32-wasip2 --target-dir "$ROOT/plugins/target")

if [ -n "$micro" ]; then
    # Before the release build below: this bench build links a sluice
    # binary with the bench-native feature, which the build below replaces.
    echo "==== micro-benchmarks (criterion)"
    cargo bench -p sluice --features bench-native --bench micro
fi

echo "==== build sluice and sluice-bench (release)"
cargo build --release -p sluice -p sluice-bench

target="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "==== sluice-bench run"
SLUICE_BIN="$target/release/sluice" "$target/release/sluice-bench" run \
    --out "$target/bench" --python "$SLUICE_VENV/bin/python3" ${args[@]+"${args[@]}"}
