#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, slow end-to-end tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow and not cluster"` for the quick part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium renders the HTML report in tests/cli/test_evaluate_report.py (the test skips
# without it). Installed where root and apt are available; idempotent, and quiet.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian's chromium (renders report.html in the tests)"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
     || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }) \
     || echo "[test] could not install chromium; the report rendering test will be skipped"
fi
# The `ray up` test (tests/cluster/test_cluster_launcher.py) logs in over SSH to this machine as a
# dedicated user: it needs sshd, rsync (file_mounts) and setfacl (lets that user reach the
# venv's interpreter). Installed where root and apt are available; idempotent, and quiet.
# The package must not start a system-wide sshd: the test runs its own on a loopback port,
# so a policy-rc.d that denies service starts is put in place for the install (Docker
# images already have one).
if { [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null || ! command -v setfacl >/dev/null; } \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian's openssh-server, rsync and acl (for the ray up test)"
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server rsync acl >/dev/null 2>&1 \
     || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server rsync acl >/dev/null 2>&1; }) \
     || echo "[test] could not install openssh-server/rsync/acl; the ray up test will be skipped"
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
exec .venv/bin/python -m pytest "$@"
