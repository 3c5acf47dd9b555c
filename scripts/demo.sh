#!/usr/bin/env bash
# The README's demo command: adds the wasm target if missing, builds the
# example plugins and runs `sluice demo` (in-process MQTT broker and Kafka,
# simulated devices, the pipeline in configs/demo.yaml). Extra arguments go
# to `sluice demo`, e.g. `bash scripts/demo.sh --duration 30 --devices 50`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" rust
echo "demo: building the example plugins (wasm32-wasip2)..." >&2
(cd plugins && cargo build --release --target wasm32-wasip2 --target-dir "$ROOT/plugins/target")
echo "demo: building sluice..." >&2
cargo build -p sluice --bin sluice
exec "${CARGO_TARGET_DIR:-$ROOT/target}/debug/sluice" demo "$@"
