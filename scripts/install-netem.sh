#!/usr/bin/env bash
# Install the network tools the Jepsen-style tests (tests/jepsen) need: iproute2 (`ip netns`,
# veth, bridge) and iptables (partition rules inside each member's namespace).
#
#   scripts/install-netem.sh
#
# Idempotent: does nothing when `ip` and `iptables` are already on PATH.  Otherwise, when running
# as root on a machine with apt-get, installs Debian's `iproute2` and `iptables` packages.
#
# Never fails: if the tools cannot be installed it says why and exits 0; tests/jepsen then skips
# with a message naming what is missing (as it also does without root or CAP_NET_ADMIN).
set -u

log() { echo "install-netem: $*" >&2; }

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)

if [ "${#missing[@]}" -eq 0 ]; then
    log "ip and iptables already installed ($(command -v ip), $(command -v iptables))"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    log "not root; not installing ${missing[*]} (the Jepsen-style tests will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get on this machine; not installing ${missing[*]} (the Jepsen-style tests will be skipped)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get update >/tmp/install-netem.apt.log 2>&1; then
    log "apt-get update failed (see /tmp/install-netem.apt.log); not installing ${missing[*]}"
    tail -n 5 /tmp/install-netem.apt.log >&2
    exit 0
fi
if ! apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/install-netem.apt.log 2>&1; then
    log "apt-get install ${missing[*]} failed (see /tmp/install-netem.apt.log); not installing"
    tail -n 5 /tmp/install-netem.apt.log >&2
    exit 0
fi

if command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; then
    log "installed ${missing[*]}: $(command -v ip), $(command -v iptables) ($(iptables --version 2>/dev/null))"
else
    log "installed ${missing[*]} but ip/iptables are still not on PATH; the Jepsen-style tests will be skipped"
fi
exit 0
