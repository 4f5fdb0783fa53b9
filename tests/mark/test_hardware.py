"""bf16 only where the CPU has it: refused before any data is loaded or Ray starts (issue 12)."""

import pytest
import torch

import marktune.mark.hardware as hardware
from marktune.cli import run
from marktune.mark.config import ConfigError


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the flag reader at a hand-written /proc/cpuinfo."""
    def write(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n\n"
                        f"processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n")
        monkeypatch.setattr(hardware, "CPUINFO", path)
        hardware.cpu_has_native_bf16.cache_clear()
    yield write
    hardware.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("flags,native", [
    ("fpu sse sse2 avx avx2 fma", False),                      # AVX2-only AMD EPYC
    ("avx2 avx512f avx512bw avx512vl avx512dq", False),       # AVX-512 without bf16 (emulated)
    ("avx2 avx512f avx512_bf16 avx512_vnni", True),           # AMD EPYC / Intel Cooper Lake
    ("avx2 avx512f amx_bf16 amx_tile", True),                 # Intel Sapphire Rapids
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, flags, native):
    cpuinfo(flags)
    assert hardware.cpu_has_native_bf16() is native
    assert hardware.cpu_model_name() == "Test CPU 9000"


def test_bf16_is_refused_on_a_cpu_without_it_and_allowed_on_cuda(cpuinfo):
    cpuinfo("avx2 fma")
    with pytest.raises(ConfigError, match="Test CPU 9000.*no native bfloat16.*precision=fp32"):
        hardware.check_precision("bf16", "cpu")
    hardware.check_precision("fp32", "cpu")
    hardware.check_precision("bf16", torch.device("cuda", 0))  # a GPU decides for itself
    cpuinfo("avx2 avx512_bf16")
    hardware.check_precision("bf16", "cpu")


def test_run_refuses_bf16_before_loading_data(cpuinfo, monkeypatch, tmp_path, capsys):
    cpuinfo("avx2 fma")
    loaded = []
    monkeypatch.setattr(run, "load_benchmark_for", lambda *a, **k: loaded.append(1))
    code = run.main(["--benchmark", "synthetic", "--set", "precision=bf16", "--device", "cpu",
                     "--out", str(tmp_path / "o")])
    assert code == 2 and loaded == []
    assert "precision=fp32" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_search_refuses_bf16_before_ray_starts(cpuinfo, monkeypatch, tmp_path, capsys):
    from marktune.cli import search

    cpuinfo("avx2 fma")
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # trials would run on this CPU
    code = search.main(["--space", "digits", "--set", "precision=bf16", "--storage", str(tmp_path / "r")])
    assert code == 2
    assert "no native bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_search_refuses_a_space_that_searches_bf16(cpuinfo, monkeypatch, tmp_path, capsys):
    from marktune.cli import search

    space = tmp_path / "space.yaml"
    space.write_text("benchmark: digits\nfixed: {epochs: 1}\n"
                     "search:\n  precision: {type: choice, values: [fp32, bf16]}\n")
    cpuinfo("avx2 fma")
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert search.main(["--space", str(space), "--storage", str(tmp_path / "r")]) == 2
    assert "no native bfloat16" in capsys.readouterr().err


def test_unwritable_storage_is_a_clear_error_before_ray_starts(tmp_path, monkeypatch, capsys):
    from marktune.cli import search

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = search.main(["--space", "digits", "--storage", "/proc/nope"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "--storage /proc/nope: cannot create this directory" in err
    assert "Traceback" not in err
    assert "Started a local Ray instance" not in err + out


def test_a_split_the_benchmark_cannot_make_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    from marktune.cli import search

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = search.main(["--space", "cifar100", "--set", "num_tasks=3", "--storage", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "100 classes of cifar100 cannot be cut into 3 tasks" in err
    assert "Traceback" not in err and "Started a local Ray instance" not in err + out
    assert not (tmp_path / "r").exists()
