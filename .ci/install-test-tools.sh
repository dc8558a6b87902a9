#!/usr/bin/env bash
# Installs the system tools some tests need and pip cannot provide, from Debian's packages:
#   prometheus + promtool for `promtool check config|rules` and the end-to-end monitoring test,
#     which starts its own Prometheus on a loopback port;
#   chromium for the web page's browser tests (Playwright drives it; Playwright's own browser
#     download is not used);
#   redis-server for the job tests (tests/test_service_jobs.py), which start their own Redis on a
#     loopback port and replicas sharing it.
# A no-op for what is already on PATH. Without root or apt it only warns: the tests that need the
# tools then skip with the reason (or fail, under CI=true), so the rest of the suite still runs.
set -euo pipefail

missing=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)
fi
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
if ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

warn() { echo "install-test-tools: $*; the tests that need ${missing[*]} will skip (fail under CI=true)" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    warn "${missing[*]} missing and not root (run: sudo apt-get install ${missing[*]})"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "${missing[*]} missing and apt-get unavailable"
    exit 0
fi

# Debian's prometheus and redis-server packages would start their own daemons (:9090, :6379) after
# installing; the tests never use them, so keep services from starting for the duration of the install (Debian's
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

echo "install-test-tools: installing Debian's ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    warn "apt-get install ${missing[*]} failed"
    exit 0
fi
command -v promtool >/dev/null 2>&1 && promtool --version | head -n 1 >&2
command -v chromium >/dev/null 2>&1 && chromium --version >&2
command -v redis-server >/dev/null 2>&1 && redis-server --version >&2
exit 0
