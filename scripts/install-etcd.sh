#!/usr/bin/env bash
# Install etcd and etcdctl (the reference for the KV store's compatibility suite and benchmark, and
# the unmodified client tests/test_kv_grpc_etcdctl.py drives the store's gRPC API with).
#
#   scripts/install-etcd.sh
#
# Idempotent: does nothing when `etcd` and `etcdctl` are already on PATH.  Otherwise, when running
# as root on a machine with apt-get, installs Debian's `etcd-server` and `etcd-client` packages
# (bookworm ships 3.4.23, the version docs/../etcd-gateway-api.md was captured with); each package
# is installed on its own, so one that fails does not keep the other out.  The package may start an etcd service on
# 2379/2380; the tests use their own ports, but we stop and disable it so nothing is left running.
#
# Never fails: if etcd cannot be installed it says why and exits 0, and tests/test_etcd_compat.py
# then skips its etcd backend with a message saying the binary is absent.
set -u

log() { echo "install-etcd: $*" >&2; }

if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
    log "etcd already installed: $(command -v etcd) ($(etcd --version 2>/dev/null | head -n 1))"
    log "etcdctl already installed: $(command -v etcdctl) ($(etcdctl version 2>/dev/null | head -n 1))"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    log "not root and etcd/etcdctl are not both on PATH; not installing (the tests needing them skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get on this machine; not installing (the etcd backend of the tests will be skipped)"
    exit 0
fi

# Keep the package from starting its service while it is installed (the Docker convention:
# policy-rc.d exiting 101 means "do not start services").  Only add one if none exists, and
# remove only the one we added.
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
if ! apt-get update >/tmp/install-etcd.apt.log 2>&1; then
    log "apt-get update failed (see /tmp/install-etcd.apt.log); not installing"
    tail -n 5 /tmp/install-etcd.apt.log >&2
    exit 0
fi
for pkg in etcd-server etcd-client; do
    if ! apt-get install -y --no-install-recommends "$pkg" >>/tmp/install-etcd.apt.log 2>&1; then
        log "apt-get install $pkg failed (see /tmp/install-etcd.apt.log); the tests needing it skip"
        tail -n 5 /tmp/install-etcd.apt.log >&2
    fi
done

# Make sure no packaged etcd service is left running (systemctl may be present without systemd
# running, as in containers; then fall back to the SysV script / service wrapper).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop etcd >/dev/null 2>&1 || true
    systemctl disable etcd >/dev/null 2>&1 || true
else
    if [ -x /etc/init.d/etcd ]; then
        /etc/init.d/etcd stop >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service etcd stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d etcd disable >/dev/null 2>&1 || true
    fi
fi
# Last resort: a daemon started by the package runs as the `etcd` user with the packaged config
# (our test clusters run as the invoking user); stop only that one, by PID.
if command -v pgrep >/dev/null 2>&1; then
    for pid in $(pgrep -u etcd -x etcd 2>/dev/null); do
        log "stopping packaged etcd service (pid $pid)"
        kill "$pid" 2>/dev/null || true
    done
fi

if command -v etcd >/dev/null 2>&1; then
    log "installed $(command -v etcd) ($(etcd --version 2>/dev/null | head -n 1))"
else
    log "no etcd on PATH; the etcd backend of the tests will be skipped"
fi
if command -v etcdctl >/dev/null 2>&1; then
    log "installed $(command -v etcdctl) ($(etcdctl version 2>/dev/null | head -n 1))"
else
    log "no etcdctl on PATH; tests/test_kv_grpc_etcdctl.py will be skipped"
fi
exit 0
