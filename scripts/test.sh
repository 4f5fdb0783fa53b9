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
# The three-node cluster test (tests/cluster/test_three_node_cluster.py) makes network namespaces
# (iproute2's ip, util-linux's unshare), runs an sshd in each (openssh-server), lets `ray up` copy
# files over them (rsync), lets its SSH user reach the venv's interpreter (acl's setfacl), and
# starts a PostgreSQL server of its own in the head's namespace (postgresql: only its binaries
# are used, on a data directory the test makes and removes). Installed where root and apt are
# available; idempotent, and quiet. The packages must not start system-wide servers: a
# policy-rc.d that denies service starts is put in place for the install (Docker images
# already have one).
if { [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null || ! command -v setfacl >/dev/null \
     || ! command -v ip >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian's openssh-server, rsync, acl, iproute2 and postgresql (for the cluster test)"
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    packages="openssh-server rsync acl iproute2 postgresql"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null 2>&1 \
     || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null 2>&1; }) \
     || echo "[test] could not install $packages; the three-node cluster test will be skipped"
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
exec .venv/bin/python -m pytest "$@"
