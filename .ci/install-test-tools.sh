#!/usr/bin/env bash
# Installs the system tools the deployment tests need and pip cannot provide:
#   prometheus + promtool (Debian package `prometheus`) for `promtool check config|rules` and the
#   end-to-end monitoring test, which starts its own Prometheus on a loopback port.
# A no-op when they are already on PATH. Without root or apt it only warns: the tests that need the
# tools then skip with the reason (or fail, under CI=true), so the rest of the suite still runs.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

warn() { echo "install-test-tools: $*; the Prometheus tests will skip (fail under CI=true)" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    warn "prometheus/promtool missing and not root (run: sudo apt-get install prometheus)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "prometheus/promtool missing and apt-get unavailable"
    exit 0
fi

# Debian's package would start its own prometheus daemon on :9090 after installing; the tests
# never use it, so keep services from starting for the duration of the install (Debian's
# policy-rc.d protocol: exit 101 = action forbidden). An existing policy is left untouched.
policy=/usr/sbin/policy-rc.d
added_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=yes
fi
cleanup() { if [ "$added_policy" = yes ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install-test-tools: installing Debian's prometheus (provides prometheus and promtool)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    warn "apt-get install prometheus failed"
    exit 0
fi
promtool --version | head -n 1 >&2
