"""Which Ray a command starts or joins (marktune.tune.runs.launch.start_ray)."""
import pytest

from marktune.tune.runs.launch import start_ray
from marktune.tune.plan import RaySettings


@pytest.fixture
def ray_init_calls(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("address", [None, "", "local"])
def test_without_an_address_a_command_starts_a_ray_of_its_own(ray_init_calls, address):
    # ray.init(address=None) joins the Ray named in /tmp/ray/ray_current_cluster (a `ray start`,
    # or a ray.cluster_utils.Cluster in a test running beside) and then refuses num_cpus: seen in CI
    start_ray(RaySettings(address=address, num_cpus=2, num_gpus=1))
    (kwargs,) = ray_init_calls
    assert kwargs["address"] == "local"
    assert (kwargs["num_cpus"], kwargs["num_gpus"]) == (2, 1)


def test_with_an_address_a_command_joins_that_cluster_and_sizes_nothing(ray_init_calls):
    start_ray(RaySettings(address="auto"))
    (kwargs,) = ray_init_calls
    assert kwargs["address"] == "auto"
    assert "num_cpus" not in kwargs and "num_gpus" not in kwargs
