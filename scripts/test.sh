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
# With extra arguments, one pytest run of what they select.
if [ $# -gt 0 ] || [ "${MARKTUNE_TEST_SERIAL:-}" = 1 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# The whole suite in two pytest processes side by side. Beside: the three-node cluster test
# (tests/cluster/test_three_node_cluster.py), whose 3-4 minutes are mostly waits (sshd, `ray up`
# over SSH, workers joining, `ray down`), then the tests marked mostly_waiting (one trial at a
# time, waits on Ray: each keeps under about half of 2 cores busy). In front: everything else,
# the slow tests that start Ray first, while those beside run, and the ones that keep both cores
# busy on their own (the quick part, -m cpu_bound) last (tests/conftest.py orders them).
# The cores are busier that way; run one after the other, each idle moment added to the wall.
# The report from beside is printed once the front run has finished; the exit status fails if
# either fails. MARKTUNE_TEST_SERIAL=1 runs everything in one pytest, one test after another.
THREE_NODE=tests/cluster/test_three_node_cluster.py
# A background job starts with SIGINT ignored (bash does that without job control) and Python
# keeps an ignored SIGINT ignored: give the pytest beside Python's own handler back, so that
# Ctrl-C stops it through its clean-up (which removes the three-node test's namespaces).
pytest_beside() {
    .venv/bin/python -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' "$@"
}
side=$(mktemp -d "${TMPDIR:-/tmp}/marktune-test-beside.XXXXXX")
echo "[test] $THREE_NODE and the mostly_waiting tests run beside the rest (log: $side/log); their report follows"
(
    set +e
    # pytest's exit 5 is "no test collected" (the three-node test skips where it cannot run)
    pytest_beside "$THREE_NODE" -p no:cacheprovider --basetemp "$side/tmp3"; three=$?
    [ "$three" -eq 5 ] && three=0
    echo
    waiting=130
    # pytest's exit 2 is "interrupted": Ctrl-C reached it. This script's trap runs only once the
    # front pytest has ended, which can take long: a search under way takes Ctrl-C as its own.
    [ -e "$side/stop" ] || [ "$three" -eq 2 ] \
        || { pytest_beside -m mostly_waiting --ignore "$THREE_NODE" -p no:cacheprovider --basetemp "$side/tmpw"
             waiting=$?; }
    [ "$three" -ne 0 ] && exit "$three"
    exit "$waiting"
) > "$side/log" 2>&1 &
side_pid=$!
# Ctrl-C (or SIGINT/SIGTERM to this script): the pytest beside gets SIGINT, and nothing after it starts
trap 'touch "$side/stop"; pkill -INT -P "$side_pid" 2>/dev/null; wait "$side_pid"' INT TERM
set +e
MARKTUNE_TEST_CPU_BOUND_LAST=1 .venv/bin/python -m pytest --ignore "$THREE_NODE" -m "not mostly_waiting"
front=$?
wait "$side_pid"
beside=$?
set -e
echo
echo "[test] ---------------- beside: $THREE_NODE, then -m mostly_waiting ----------------"
cat "$side/log"
rm -rf "$side"
if [ "$front" -ne 0 ]; then exit "$front"; fi
exit "$beside"
