#!/usr/bin/env bash
# The fault-injection suite at full size (issue 3): real mosquitto and tansu,
# the `sluice` binary, and seven faults injected while a sequence-numbered
# stream flows through (tests/faults.rs):
#
#   kill-9        kill -9 of sluice 10 times during a 100k-message QoS 1 stream
#   sigterm       SIGTERM during the stream, then a restart
#   kafka-stop    the Kafka broker frozen (SIGSTOP) for 30 s mid-stream
#   mqtt-restart  mosquitto restarted mid-stream (persistence on)
#   poison        a message the transform rejects every 1,000
#   too-large     messages larger than Kafka's limit among normal ones
#   offline       5,000 messages published while sluice is offline
#
# Each scenario prints `NAME: sent N, delivered N, missing M, duplicates D, ...`;
# this script runs them one at a time and ends with a summary of those lines.
#
#   bash scripts/faults.sh            # full size (takes several minutes)
#   SLUICE_FAULTS=short bash scripts/faults.sh   # the short version CI runs
#
# Extra arguments go to the test binary (e.g. a test-name filter). Like
# scripts/test.sh it sets up what is missing (scripts/setup.sh) and builds the
# example plugins and sluice first; an existing CARGO_TARGET_DIR is respected.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export SLUICE_FAULTS="${SLUICE_FAULTS:-full}"

# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" all

echo "==== build plugins (wasm32-wasip2, release) and sluice"
(cd plugins && cargo build --release --target wasm32-wasip2 --target-dir "$ROOT/plugins/target")
cargo build -p sluice
cargo test -p sluice-tests --test faults --no-run

echo "==== fault suite (SLUICE_FAULTS=$SLUICE_FAULTS)"
log="$(mktemp "${TMPDIR:-/tmp}/sluice-faults.XXXXXX")"
trap 'rm -f "$log"' EXIT
started=$SECONDS
status=0
cargo test -p sluice-tests --test faults -- --nocapture --test-threads=1 "$@" 2>&1 \
    | tee "$log" || status=$?

echo
echo "==== summary (SLUICE_FAULTS=$SLUICE_FAULTS, $((SECONDS - started)) s)"
grep -oE '(kill-9|sigterm|kafka-stop|mqtt-restart|poison|too-large|offline): sent [0-9]+, delivered .*' "$log" || true
grep -E '^test result:' "$log" || true
if [ "$status" -ne 0 ]; then
    echo "FAILED (exit $status): see the output above" >&2
fi
exit "$status"
