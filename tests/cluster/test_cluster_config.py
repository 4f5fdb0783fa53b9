"""cluster.yaml and cluster-onprem.yaml pass Ray's own launcher validation, offline.

`ray up` runs `prepare_config` (merge the provider's defaults.yaml, fill node-type
min/max workers; for the `local` provider, build its single node type from the host
list) and then `validate_config` (ray-schema.json plus a few cross-field checks).
Both are file-only for aws and local: the cloud calls (boto3, key pairs, AMIs, IAM)
happen later, in the provider's bootstrap, which these tests never reach. A guard
makes any network access fail the test anyway.
"""
from __future__ import annotations

import copy
import re
import shlex
import socket
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster config validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before touching any cloud."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def renamed(d: dict, old: str, new: str) -> dict:
    """`d` with key `old` renamed to `new`, in place of the original (order kept)."""
    assert old in d, f"{old!r} not in {sorted(d)}"
    return {(new if k == old else k): v for k, v in d.items()}


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_passes_ray_validation(path):
    ray_validate(load(path))


# --- a misspelt key must fail --------------------------------------------------

@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
@pytest.mark.parametrize("old,new", [("max_workers", "max_wokers"),
                                     ("setup_commands", "setup_comands"),
                                     ("file_mounts", "file_mount")])
def test_misspelt_top_level_key_fails(path, old, new):
    config = load(path)
    if old not in config:  # cluster-onprem.yaml leaves max_workers to the host list
        config[new] = 2
    else:
        config = renamed(config, old, new)
    with pytest.raises(jsonschema.ValidationError, match=new):
        ray_validate(config)


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_added_unknown_key_fails(path):
    config = load(path)
    config["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        ray_validate(config)


@pytest.mark.parametrize("old,new", [("min_workers", "min_wokers"),
                                     ("resources", "resource")])
def test_misspelt_node_type_key_fails(old, new):
    config = load(AWS)
    config["available_node_types"]["gpu_worker"] = renamed(
        config["available_node_types"]["gpu_worker"], old, new)
    with pytest.raises(jsonschema.ValidationError, match=new):
        ray_validate(config)


def test_misspelt_head_node_type_fails():
    config = load(AWS)
    config["head_node_type"] = "haed"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_validate(config)


@pytest.mark.parametrize("old,new", [("worker_ips", "worker_ip"), ("head_ip", "head_ips")])
def test_onprem_misspelt_host_list_fails(old, new):
    # `provider:` is open in Ray's schema (any key passes it), but the local
    # provider's preparation insists on head_ip and worker_ips.
    config = load(ONPREM)
    config["provider"] = renamed(config["provider"], old, new)
    with pytest.raises(click.ClickException, match="head_ip"):
        ray_validate(config)


# --- what the files are meant to say -------------------------------------------

def test_aws_head_runs_no_trials_and_gpu_workers_autoscale():
    c = ray_validate(load(AWS))
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0
    workers = [t for name, t in types.items() if name != c["head_node_type"]]
    assert len(workers) == 1
    (gpu,) = workers
    assert gpu["resources"]["GPU"] == 1
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert gpu["min_workers"] == 0
    assert gpu["max_workers"] == 8 <= c["max_workers"]
    # workers write trial results to S3 themselves
    assert "IamInstanceProfile" in gpu["node_config"]


def test_onprem_head_runs_no_trials():
    c = ray_validate(load(ONPREM))
    start = " ".join(c["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--num-gpus=0" in start
    assert c["max_workers"] == len(c["provider"]["worker_ips"])


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_project_synced_and_installed_everywhere(path):
    c = ray_validate(load(path))
    assert c["file_mounts"]["~/marktune"] == "."
    # prepare_config prepends setup_commands to both head and worker setup; the cluster
    # extra brings the dashboard, the Jobs API and the autoscaler (ray[default])
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any('pip install -q -e "$HOME/marktune[cluster]"' in cmd for cmd in c[key]), key
    assert ".gitignore" in c["rsync_filter"]  # keeps .venv and runs/ off the wire


# --- token authentication and what listens where ----------------------------------

def start_commands(c: dict) -> list[str]:
    return [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for cmd in c[key] if "ray start" in cmd]


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_every_ray_start_runs_in_token_mode(path):
    starts = start_commands(ray_validate(load(path)))
    assert len(starts) == 2  # the head's and the workers'
    for cmd in starts:
        # set in the same shell, before `ray start`, and not unset or overridden after it
        before, _, after = cmd.partition("ray start")
        assert re.search(r"(^|[;&|]\s*)export RAY_AUTH_MODE=token\s*;", before), cmd
        assert "RAY_AUTH_MODE" not in after, cmd
        assert before.count("RAY_AUTH_MODE") == 1, cmd


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_dashboard_listens_on_localhost_only(path):
    c = ray_validate(load(path))
    (head,) = [cmd for cmd in c["head_start_ray_commands"] if "ray start" in cmd]
    assert re.findall(r"--dashboard-host[= ](\S+)", head) == ["127.0.0.1"]
    for cmd in start_commands(c) + c["setup_commands"]:
        assert "0.0.0.0" not in cmd, cmd


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_token_reaches_every_node_readable_by_its_owner_only(path):
    raw = load(path)
    c = ray_validate(raw)
    # top-level file_mounts go to the head and, from it, to every worker (no node type
    # of cluster.yaml has its own file_mounts to replace them)
    assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for node_type in raw.get("available_node_types", {}).values():
        assert "file_mounts" not in node_type
    # setup_commands run on every node (prepare_config puts them before the head's and
    # the workers' own); the token ends up mode 600 there, its directory 700
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("chmod 600 ~/.ray/auth_token" in cmd and "chmod 700 ~/.ray" in cmd
                   for cmd in c[key]), key
    # ... and Ray commands run there later (ray exec, jobs) are in token mode too
    assert any("echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc" in cmd for cmd in c["setup_commands"])


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_every_command_is_one_complete_shell_command(path):
    # YAML ends a plain scalar at " #": `echo 'x  # note' >> f` loses its closing quote
    # (the PATH line once did, and every `ray up` stopped there)
    c = ray_validate(load(path))
    keys = [k for k in c if k.endswith("_commands")]
    for key in keys:
        for cmd in c[key]:
            shlex.split(cmd)  # raises on an unclosed quote


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_storage_is_set_in_one_place_for_every_node(path):
    text = path.read_text()
    settings = re.findall(r"export MARKTUNE_STORAGE=(\S+?)'", text)
    assert len(settings) == 1, settings
    c = load(path)
    assert sum("MARKTUNE_STORAGE=" in cmd for cmd in c["setup_commands"]) == 1


def test_cluster_ray_matches_local_ray():
    # The nodes install the ray pinned in pyproject.toml (ray[tune], and ray[default] in the
    # cluster extra); `ray up` must be run with the same version (the launcher checks
    # nothing of the sort itself).
    text = (ROOT / "pyproject.toml").read_text()
    assert re.findall(r'"ray\[tune\]==([^"]+)"', text) == [ray.__version__]
    # (the extra's first entry: PostgreSQL's driver follows it)
    assert re.findall(r'cluster = \["ray\[default\]==([^"]+)"[,\]]', text) == [ray.__version__]


def test_cluster_extra_brings_the_postgresql_driver_sqlalchemy_uses():
    # `--optuna-storage postgresql://...` on the nodes: SQLAlchemy picks its default driver for
    # the bare scheme (psycopg 3 since SQLAlchemy 2.1); the cluster extra must install that one.
    import tomllib

    import sqlalchemy.dialects.postgresql as pg

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    default_driver = pg.dialect.driver  # "psycopg" or, before SQLAlchemy 2.1, "psycopg2"
    assert any(re.fullmatch(rf"{default_driver}(-binary|\[binary\])==[0-9.]+", req) for req in extra), (
        default_driver, extra)
