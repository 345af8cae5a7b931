#!/usr/bin/env bash
# Install the compiled load generators benchmarks/bench_kv.py drives the KV store and etcd with:
# h2load (Debian's nghttp2-client: gRPC unary calls over HTTP/2) and wrk (the JSON gateway).
#
#   scripts/install-loadgen.sh
#
# Idempotent: does nothing when `h2load` and `wrk` are already on PATH.  Otherwise, when running
# as root on a machine with apt-get, installs Debian's `nghttp2-client` and `wrk` packages.
#
# Never fails: if the tools cannot be installed it says why and exits 0; bench_kv.py then falls
# back to its Python load generator and says so (its smoke test skips with the reason).
set -u

log() { echo "install-loadgen: $*" >&2; }

missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ "${#missing[@]}" -eq 0 ]; then
    log "h2load and wrk already installed ($(command -v h2load), $(command -v wrk))"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    log "not root; not installing ${missing[*]} (bench_kv.py will use its Python load generator)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get on this machine; not installing ${missing[*]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_log=/tmp/install-loadgen.apt.log
if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    # the package lists may be stale or absent on a fresh machine: refresh them once and retry
    if ! { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } >>"$apt_log" 2>&1; then
        log "apt-get install ${missing[*]} failed (see $apt_log)"
        tail -n 5 "$apt_log" >&2
        exit 0
    fi
fi
if command -v h2load >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1; then
    log "installed ${missing[*]}: $(h2load --version 2>/dev/null | head -1), $(wrk -v 2>&1 | head -1)"
else
    log "installed ${missing[*]} but h2load/wrk are still not on PATH"
fi
exit 0
