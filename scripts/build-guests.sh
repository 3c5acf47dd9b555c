#!/usr/bin/env bash
# Builds the example transforms written in Python and JavaScript into
# WebAssembly components:
#
#   plugins/target/guests/python_json_map.wasm   plugins/examples/python-json-map/app.py  (componentize-py)
#   plugins/target/guests/js_json_map.wasm       plugins/examples/js-json-map/app.js      (componentize-js)
#
#   bash scripts/build-guests.sh [python|js|all]      # default: all
#
# Installs the build tools first when they are missing (scripts/setup.sh
# guests: PyPI and npm only). A component is rebuilt only when one of its
# inputs changed (its source, the tool pin, wit/, this script): a hash of them
# is kept beside it in NAME.wasm.inputs. SLUICE_GUEST_DIR=DIR writes the
# components to DIR instead. Safe to run concurrently (one build at a time).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
which="${1:-all}"
case "$which" in
    python | js | all) ;;
    *)
        echo "usage: bash scripts/build-guests.sh [python|js|all]" >&2
        exit 2
        ;;
esac

# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" guests

OUT="${SLUICE_GUEST_DIR:-$ROOT/plugins/target/guests}"
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9

log() {
    printf 'build-guests: %s\n' "$*" >&2
}

# build NAME INPUTS... -- COMMAND... : runs COMMAND (which writes "$tmp") when
# the hash of INPUTS differs from the one the last build of NAME recorded.
build() {
    local name="$1" inputs=() stamp
    shift
    while [ "$1" != -- ]; do
        inputs+=("$1")
        shift
    done
    shift
    local wasm="$OUT/$name.wasm"
    stamp="$(for f in "${inputs[@]}"; do printf '%s\n' "$f"; sha256sum <"$f"; done | sha256sum | cut -d' ' -f1)"
    if [ -f "$wasm" ] && [ "$(cat "$wasm.inputs" 2>/dev/null)" = "$stamp" ]; then
        log "$name.wasm is up to date ($(du -h "$wasm" | cut -f1))"
        return 0
    fi
    local tmp="$OUT/.$name.wasm.tmp"
    rm -f "$tmp" "$wasm.inputs"
    local started=$SECONDS
    "$@"
    mv "$tmp" "$wasm"
    printf '%s\n' "$stamp" >"$wasm.inputs"
    log "built $wasm ($(stat -c %s "$wasm") bytes) in $((SECONDS - started))s"
}

wit_files=(wit/*.wit)
here=scripts/build-guests.sh

if [ "$which" = python ] || [ "$which" = all ]; then
    src=plugins/examples/python-json-map
    build python_json_map "$src/app.py" "$src/requirements.txt" "${wit_files[@]}" "$here" -- \
        "$SLUICE_COMPONENTIZE_PY" -d wit -w transform componentize --stub-wasi -p "$src" app -o "$OUT/.python_json_map.wasm.tmp"
fi

if [ "$which" = js ] || [ "$which" = all ]; then
    src=plugins/examples/js-json-map
    # StarlingMonkey (SpiderMonkey) with the WASI features the transform does
    # not use disabled: without `--disable http fetch-event` the component
    # imports wasi:http; stdio, random and clocks are not needed either.
    build js_json_map "$src/app.js" "$src/package-lock.json" "${wit_files[@]}" "$here" -- \
        "$SLUICE_COMPONENTIZE_JS" "$src/app.js" --wit wit --world-name transform \
        --disable stdio random clocks http fetch-event --out "$OUT/.js_json_map.wasm.tmp"
fi
