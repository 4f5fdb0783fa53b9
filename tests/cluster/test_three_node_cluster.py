"""`ray up cluster-onprem.yaml` with a head and two worker nodes, a worker lost mid-search, the
study in a real PostgreSQL: on one machine, as docs/cluster.md tells a user to.

The machines are network namespaces on a bridge, each with its own sshd, process tree, mounts and
/tmp (tests/cluster/netns_cluster.py). The launcher runs on the host, as on a user's laptop:
a token made once (`ray get-auth-token --generate`, mode 600), `ray up -y` of the file with only
its per-site settings changed (the addresses, the SSH user and key, the storage), then the head's
autoscaler starts both workers over SSH with the file's own worker commands. The Jobs API is
reached through `ray dashboard` (SSH port forwarding) with the token. A digits search (4 trials,
1 CPU each; the head has none) runs as a job, its study in PostgreSQL on the head; one worker is
lost mid-search (its link and every process); after `ray down`, a fresh process reads the study
back. On one machine the same disk stands in for the shared storage (NFS): one directory, the
same path on every node.

Needs root, namespaces, sshd, rsync, setfacl and PostgreSQL's server (scripts/test.sh installs
them with apt); skipped, with the reason, where one is missing.
"""
from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from marktune.mark.metrics import TIME_ATTR
from marktune.results.files import read_results
from tests.cluster.netns_cluster import USER, Machines, missing_prerequisites, wait_for_port

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
ONPREM = ROOT / "cluster-onprem.yaml"
NAME = "digits-3node"
SAMPLES = 4
NUM_TASKS = 5
UP_TIMEOUT_S = 300
JOIN_TIMEOUT_S = 150  # they join within 15 to 25 s of `ray up` here
JOB_TIMEOUT_S = 480
RAY_EXIT_TIMEOUT_S = 120  # a worker's Ray, once the head is gone, until it exits by itself
NOISE = re.compile(r"ClusterState|StandardAutoscaler: \{|Full command is")  # whole configs and ssh lines
TIME_STAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+( [A-Z] \d+ \d+\])?")


def render_onprem(*, head_ip: str, worker_ips: list[str], ssh_user: str, ssh_private_key: str,
                  storage: str) -> dict:
    """cluster-onprem.yaml with its per-site settings filled in, and nothing else changed."""
    config = yaml.safe_load(ONPREM.read_text())
    config["provider"]["head_ip"] = head_ip
    config["provider"]["worker_ips"] = list(worker_ips)
    config["auth"] = {"ssh_user": ssh_user, "ssh_private_key": ssh_private_key}
    setup = config["setup_commands"]
    (i,) = [k for k, cmd in enumerate(setup) if "MARKTUNE_STORAGE=" in cmd]
    setup[i] = re.sub(r"export MARKTUNE_STORAGE=[^']*", f"export MARKTUNE_STORAGE={storage}", setup[i])
    return config


def test_render_changes_only_the_site_settings():
    rendered = render_onprem(head_ip="10.1.0.10", worker_ips=["10.1.0.11", "10.1.0.12"], ssh_user="u",
                             ssh_private_key="/k", storage="/s")
    original = yaml.safe_load(ONPREM.read_text())
    assert {k for k in original if rendered[k] != original[k]} == {"provider", "auth", "setup_commands"}
    assert {k: v for k, v in rendered["provider"].items() if original["provider"][k] != v} == {
        "head_ip": "10.1.0.10", "worker_ips": ["10.1.0.11", "10.1.0.12"]}
    changed = [c for c, o in zip(rendered["setup_commands"], original["setup_commands"]) if c != o]
    assert len(changed) == 1 and "MARKTUNE_STORAGE=/s'" in changed[0]
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "worker_setup_commands", "file_mounts"):
        assert rendered[key] == original[key]


def test_a_missing_prerequisite_is_a_skip_that_says_what_is_missing(monkeypatch, tmp_path):
    from tests.cluster import netns_cluster

    monkeypatch.setattr(netns_cluster, "PG_BIN", tmp_path)  # as on a machine without postgresql
    reason = missing_prerequisites()
    if os.geteuid() != 0:
        assert reason.startswith("needs root"), reason
    elif reason is None or "PostgreSQL" not in reason:
        assert reason and "is missing" in reason, reason  # a tool before it, then
    else:
        assert "apt-get install postgresql" in reason, reason


# ---------------------------------------------------------------------- the cluster

def http(url: str, *, token: str | None = None, timeout: float = 30) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    machines: Machines
    config_file: Path
    env: dict
    token: str
    storage: Path
    pg_url: str
    password: str
    timings: dict = field(default_factory=dict)
    dashboard: str = ""  # http://127.0.0.1:<forwarded port>
    forward: subprocess.Popen | None = None
    up_tried: bool = False
    down_done: bool = False

    @property
    def head(self):
        return self.machines.nodes["head"]

    @property
    def workers(self):
        return [n for name, n in self.machines.nodes.items() if name != "head"]

    def ray(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        ray = str(Path(sys.executable).with_name("ray"))
        return subprocess.run([ray, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def alive_nodes(self) -> dict[str, dict]:
        """node address -> its resources, for the nodes the cluster has alive (Ray's state API)."""
        code, body = http(f"{self.dashboard}/api/v0/nodes?limit=100", token=self.token)
        if code != 200:
            return {}
        listed = json.loads(body)["data"]["result"]["result"]
        return {n["node_ip"]: n.get("resources_total") or {} for n in listed if n.get("state") == "ALIVE"}

    def head_log(self, pattern: str, *, lines: int = 12) -> str:
        """The head's autoscaler log lines matching ``pattern`` (what it did to the workers, and
        what their commands printed), each once, without its time stamp, the latest last."""
        found: dict[str, None] = {}
        for name in ("monitor.out", "monitor.err", "monitor.log"):
            try:
                text = self.head.path(f"/tmp/ray/session_latest/logs/{name}").read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if re.search(pattern, line, re.I) and not NOISE.search(line):
                    key = TIME_STAMP.sub("", line).strip()
                    found.pop(key, None)
                    found[key] = None
        return "\n".join(list(found)[-lines:]) or "(nothing in the head's monitor logs)"

    def down(self, *, check: bool = True) -> None:
        """`ray down -y`, then every node's Ray gone (the workers' exits by themselves); with
        ``check=False`` (the cluster never came up whole) only `ray down` itself is checked."""
        if self.down_done or not self.up_tried:
            return
        self.down_done = True
        if self.forward is not None and self.forward.poll() is None:
            os.killpg(self.forward.pid, signal.SIGTERM)
            self.forward.wait(timeout=30)
        start = time.monotonic()
        down = self.ray("down", "-y", str(self.config_file), timeout=300)
        self.timings["ray down"] = time.monotonic() - start
        assert down.returncode == 0, f"ray down failed:\n{down.stdout[-3000:]}\n{down.stderr[-3000:]}"
        if not check:
            return
        left = {n.name: n.ray_processes() for n in self.machines.nodes.values() if n.alive()}
        assert not left["head"], f"Ray still runs on the head after ray down: {left['head']}"
        # `ray down` runs `ray stop` on the head only (Ray's local provider); a worker's raylet
        # exits once it has lost the head's GCS for gcs_rpc_server_reconnect_timeout_s
        deadline = time.monotonic() + RAY_EXIT_TIMEOUT_S
        while any(left.values()) and time.monotonic() < deadline:
            time.sleep(2)
            left = {n.name: n.ray_processes() for n in self.machines.nodes.values() if n.alive()}
        self.timings["workers' Ray gone after ray down"] = time.monotonic() - start
        assert not any(left.values()), (f"Ray still runs {RAY_EXIT_TIMEOUT_S} s after ray down: "
                                        + "; ".join(f"{k}: {v}" for k, v in left.items() if v))


@pytest.fixture(scope="module")
def cluster():
    reason = missing_prerequisites()
    if reason:
        print(f"[three nodes] skipped: {reason}")
        pytest.skip(reason)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="marktune-3node-", dir="/var/tmp"))
    base.chmod(0o755)
    machines = Machines(base=base)
    launcher_home = base / "launcher"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(launcher_home), RAY_AUTH_MODE="token",
               RAY_TMPDIR=str(launcher_home / "tmp"), TMPDIR=str(launcher_home / "tmp"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    c = None
    ready = False  # the cluster came up whole: then ray down must leave no Ray process anywhere
    try:
        machines.make()
        (launcher_home / "tmp").mkdir(parents=True)
        storage = base / "shared"  # the same path on every node: the same disk stands in for NFS
        storage.mkdir()
        subprocess.run(["chown", f"{USER}:{USER}", str(storage)], check=True)
        password = secrets.token_urlsafe(18)
        pg_url = machines.start_postgres(password=password)
        config_file = base / "cluster-onprem.yaml"
        config_file.write_text(yaml.safe_dump(render_onprem(
            head_ip=machines.nodes["head"].ip, worker_ips=[n.ip for k, n in machines.nodes.items() if k != "head"],
            ssh_user=USER, ssh_private_key=str(machines.key), storage=str(storage)), sort_keys=False))
        c = Cluster(machines=machines, config_file=config_file, env=env, token="", storage=storage,
                    pg_url=pg_url, password=password)
        c.timings["machines, sshds and PostgreSQL made"] = time.monotonic() - started

        made = c.ray("get-auth-token", "--generate", timeout=60)
        assert made.returncode == 0, made.stderr
        token_file = launcher_home / ".ray" / "auth_token"
        token_file.chmod(0o600)
        c.token = token_file.read_text().strip()

        c.up_tried = True
        start = time.monotonic()
        up = c.ray("up", "-y", "--no-config-cache", str(config_file), timeout=UP_TIMEOUT_S)
        c.timings["ray up"] = time.monotonic() - start
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-6000:]}\n{up.stderr[-3000:]}"

        local = free_port()
        ray = str(Path(sys.executable).with_name("ray"))
        c.forward = subprocess.Popen([ray, "dashboard", "--port", str(local), "--no-config-cache", str(config_file)],
                                     env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for_port("127.0.0.1", local, timeout=60, proc=c.forward)
        c.dashboard = f"http://127.0.0.1:{local}"

        start = time.monotonic()
        wanted = {n.ip for n in c.workers}
        joined: dict = {}
        while time.monotonic() - start < JOIN_TIMEOUT_S:
            joined = c.alive_nodes()
            if wanted <= {ip for ip, res in joined.items() if res.get("CPU", 0) >= 1}:
                break
            if re.search(r"update-failed", c.head_log("update-failed")):
                break  # the autoscaler gave up on a worker: no need to wait out the timeout
            time.sleep(3)
        c.timings["workers joined (after ray up)"] = time.monotonic() - start
        missing = sorted(wanted - set(joined))
        assert not missing, (
            f"worker(s) {', '.join(missing)} did not join the cluster within {JOIN_TIMEOUT_S} s of `ray up`: "
            "the head's autoscaler starts them over SSH with the file's worker_setup_commands and "
            f"worker_start_ray_commands. Nodes alive: {sorted(joined)}. Their state in the autoscaler: "
            + "; ".join(c.head_log(rf"{re.escape(ip)}: local\.cluster\.node, ", lines=1) for ip in missing)
            + " (setting-up: still in those commands). What the commands and the autoscaler reported:\n"
            + c.head_log(r"fail|error|timed ?out|refused|exited", lines=10))
        ready = True
        head_resources = joined.get(c.head.ip, {})
        assert not head_resources.get("CPU") and not head_resources.get("GPU"), head_resources
        yield c
    finally:
        errors = []
        if c is not None:
            try:
                c.down(check=ready)
            except AssertionError as err:
                errors.append(str(err))
            print("[three nodes] " + ", ".join(f"{k}: {v:.1f} s" for k, v in c.timings.items()))
        leftovers = machines.remove()
        if leftovers:
            print("[three nodes] killed at the end: " + "; ".join(leftovers))
        # the launcher's SSH control sockets, which Ray names after the cluster (no setting)
        user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster_name = yaml.safe_load(ONPREM.read_text())["cluster_name"]
        cluster_hash = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
        subprocess.run(["rm", "-rf", f"/tmp/ray_ssh_{user_hash}/{cluster_hash}"], check=False)
        try:
            os.rmdir(f"/tmp/ray_ssh_{user_hash}")  # only if no other cluster's sockets are there
        except OSError:
            pass
        print(f"[three nodes] whole test: {time.monotonic() - started:.1f} s")
        assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------- what a user does with it

@pytest.mark.slow
def test_jobs_api_needs_the_token(cluster):
    code, body = http(f"{cluster.dashboard}/api/jobs/")
    assert code in (401, 403), (code, body[:200])
    code, body = http(f"{cluster.dashboard}/api/jobs/", token=cluster.token)
    assert code == 200, (code, body[:200])
    assert isinstance(json.loads(body), list)
    code, body = http(f"{cluster.dashboard}/api/jobs/", token="not-" + cluster.token)
    assert code in (401, 403), (code, body[:200])


@pytest.mark.slow
def test_token_reached_every_node_readable_by_its_owner_only(cluster):
    import pwd

    uid = pwd.getpwnam(USER).pw_uid
    for node in cluster.machines.nodes.values():
        ray_dir = node.home / ".ray"
        token = ray_dir / "auth_token"
        assert (token.stat().st_mode & 0o777, token.stat().st_uid) == (0o600, uid), node.name
        assert (ray_dir.stat().st_mode & 0o777, ray_dir.stat().st_uid) == (0o700, uid), node.name
        assert token.read_text().strip() == cluster.token, node.name


def search_against(cluster, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    # timeout: a hang guard, not a speed target
    return subprocess.run([sys.executable, "-m", "marktune.search", "--space", "digits", "--samples", "1",
                           "--address", f"{cluster.head.ip}:6379", "--storage", str(tmp_path / "s")],
                          env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.slow
def test_search_with_a_wrong_token_says_so(cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * len(cluster.token))
    result = search_against(cluster, dict(cluster.env, RAY_AUTH_TOKEN_PATH=str(wrong)), tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not match the cluster's token" in result.stderr, result.stderr[-2000:]
    assert str(wrong) in result.stderr  # says which token it used
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_search_without_token_mode_says_a_token_is_needed(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    result = search_against(cluster, env, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "requires a Ray token" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_right_token_passes_the_check(cluster, tmp_path):
    # the checks above must refuse only wrong tokens
    result = subprocess.run([sys.executable, "-c", "from marktune.tune.runs.preflight import check_address; "
                             f"check_address('{cluster.head.ip}:6379')"],
                            env=dict(cluster.env, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def trial_rows(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's result rows, in the order the driver wrote them."""
    return {d.name: read_results(d / "result.json") for d in sorted(experiment.glob("trial_*"))}


def job_status(cluster) -> str | None:
    code, body = http(f"{cluster.dashboard}/api/jobs/{NAME}", token=cluster.token)
    return json.loads(body)["status"] if code == 200 else None


def trial_errors(experiment: Path) -> str:
    return "\n".join(f"{f.parent.name}: {f.read_text(errors='replace').strip()[-600:]}"
                     for f in sorted(experiment.glob("trial_*/error.txt"))) or "(no trial wrote an error)"


@pytest.mark.slow
def test_search_across_nodes_survives_a_lost_worker_with_the_study_in_postgresql(cluster):
    c = cluster
    entry = (f"python -m marktune.search --space digits --name {NAME} --samples {SAMPLES} "
             f"--set num_tasks={NUM_TASKS} --set epochs=1 --set kb_epochs=1 --seed 0 -q --scheduler none "
             f"--address auto --storage \"$MARKTUNE_STORAGE\" --optuna-storage {c.pg_url}")
    submit = c.ray("job", "submit", "--address", c.dashboard, "--working-dir", ".", "--submission-id", NAME,
                   "--no-wait", "--", "bash", "-c", entry, timeout=120)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    submitted = time.monotonic()
    experiment = c.storage / NAME
    workers = {n.ip: n for n in c.workers}
    victim = at_loss = lost_trials = None
    status = None
    while time.monotonic() - submitted < JOB_TIMEOUT_S:
        status = job_status(c)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        rows = trial_rows(experiment)
        if victim is None:
            seen = {r.get("node_ip") for rs in rows.values() for r in rs}
            midway = {rs[-1]["node_ip"] for rs in rows.values() if rs and rs[-1][TIME_ATTR] < NUM_TASKS}
            if set(workers) <= seen and midway & set(workers):
                victim = workers[max(midway & set(workers))]  # the last worker, if it has one midway
                c.machines.lose(victim)
                lost_at = time.monotonic()
                at_loss = rows
                lost_trials = {t for t, rs in rows.items() if rs and rs[-1]["node_ip"] == victim.ip
                               and rs[-1][TIME_ATTR] < NUM_TASKS}
                c.timings["search: submitted to a worker lost"] = lost_at - submitted
        elif "node loss: until its trials continued elsewhere" not in c.timings:
            if any(rs and rs[-1]["node_ip"] != victim.ip for t, rs in rows.items() if t in lost_trials):
                c.timings["node loss: until its trials continued elsewhere"] = time.monotonic() - lost_at
        time.sleep(1)
    c.timings["search: submitted to the job's end"] = time.monotonic() - submitted
    logs = c.ray("job", "logs", "--address", c.dashboard, NAME, timeout=60)
    log = logs.stdout + logs.stderr
    print(f"[three nodes] the job's last lines:\n{log[-2500:]}")
    if status != "SUCCEEDED":
        errors = trial_errors(experiment)
        full = " ".join(f.read_text(errors="replace") for f in experiment.glob("trial_*/error.txt")) + log
        cause = (f"the workers cannot write the storage all nodes must share ({c.storage}, MARKTUNE_STORAGE): "
                 if "access to the configured storage path" in full else "")
        pytest.fail(f"{cause}job {NAME} ended {status}, "
                    + (f"after losing {victim.ip}" if victim else "before a worker was lost")
                    + f"; the trials' errors:\n{errors}\n--- the job's log:\n{log[-3000:]}")
    assert victim is not None, (f"the search ended before a worker could be lost while one of its trials "
                                f"was midway:\n{log[-3000:]}")

    # trials ran on both workers, never on the head; every task exactly once, in order
    final = trial_rows(experiment)
    assert len(final) == SAMPLES, sorted(final)
    assert {r["node_ip"] for rs in final.values() for r in rs} == set(workers), final
    for trial, rs in final.items():
        assert [r[TIME_ATTR] for r in rs] == list(range(1, NUM_TASKS + 1)), (trial, rs)
    # the lost node's unfinished trials continued on the other worker from their last finished task
    assert lost_trials, at_loss
    survivor = next(ip for ip in workers if ip != victim.ip)
    for trial in lost_trials:
        before = [r for r in final[trial] if r["node_ip"] == victim.ip]
        after = final[trial][len(before):]
        assert len(before) >= len(at_loss[trial]) >= 1, (trial, final[trial])
        assert after and {r["node_ip"] for r in after} == {survivor}, (trial, final[trial])
        assert {r["resumed_at_task"] for r in after} == {len(before)}, (trial, final[trial])
    # trials.csv accounts for every trial; the summary says, in words, that a node was lost
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(f"trial_{r['trial_id']}" for r in table) == sorted(final)
    assert {(r["status"], r["tasks_done"]) for r in table} == {("COMPLETE", str(NUM_TASKS))}, table
    assert re.search(rf"node {re.escape(victim.ip)} was lost while .* continued on {re.escape(survivor)} "
                     r"from (its|their) last finished task .*no finished task ran twice", log), log[-3000:]
    # the URL's password is in no file of the experiment (nor anywhere in the shared storage)
    files = [f for f in c.storage.rglob("*") if f.is_file()]
    assert any(f.name.startswith("experiment_state") for f in files)
    assert not [f for f in files if c.password.encode() in f.read_bytes()]

    c.down()
    # after `ray down`, a fresh process on this machine reads the study back from PostgreSQL
    read = subprocess.run(
        [sys.executable, "-c", "import json, os, optuna\n"
         "s = optuna.load_study(study_name=os.environ['STUDY'], storage=os.environ['URL'])\n"
         "print(json.dumps([[t.number, t.state.name, t.value] for t in s.trials]))"],
        env=dict(os.environ, URL=c.pg_url, STUDY=NAME), capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    study = json.loads(read.stdout.strip().splitlines()[-1])
    assert [n for n, _, _ in study] == list(range(SAMPLES)), study
    assert {state for _, state, _ in study} == {"COMPLETE"}, study
    best_csv = max(float(r["val_acc"]) for r in table)
    assert max(v for _, _, v in study) == pytest.approx(best_csv, abs=1e-3), (study, table)
