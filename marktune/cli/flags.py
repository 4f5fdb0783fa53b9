"""The flags the commands share, each declared once, in the group ``--help`` shows it in.

A command adds the groups it takes (``add_resource_flags(parser, unit="run")``...) and reads
them back into the typed plan with the functions at the end (:func:`ray_settings`); nothing
below the command line sees the argparse namespace.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

from marktune.tune.plan import RaySettings


def points(text: str) -> float:
    """An argparse type: a finite number of points (of accuracy) >= 0, refused in words otherwise.

    >>> points("0.5")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points such as 0.5, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of points >= 0, such as 0.5 (got {text})")
    return value


def at_least(minimum: int):
    """An argparse type: a whole number of at least ``minimum``, refused in words otherwise.

    >>> at_least(1)("3"), at_least(2).__name__
    (3, 'whole number >= 2')
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {value})")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def add_experiment_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="the search's experiment directory (<storage>/<name>)")


def add_resource_flags(p: argparse.ArgumentParser, *, unit: str) -> None:
    """What each trial (``unit="trial"``) or evaluation run (``unit="run"``) gets."""
    g = p.add_argument_group(f"resources per {unit}")
    g.add_argument("--cpus-per-trial", type=float, metavar="N", help=f"CPUs per {unit} (default: the space's, else 1)")
    g.add_argument("--gpus-per-trial", type=float, metavar="N",
                   help=f"GPUs per {unit}; fractions such as 0.25 pack {unit}s on one GPU "
                        "(default: the space's, else 0.25 where the cluster has GPUs, else 0)")
    g.add_argument("--max-concurrent", type=int, metavar="N", help=f"{unit}s at once (default: as resources allow)")
    g.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help=f"retries of a {unit} whose worker died or that met an I/O or memory error (it resumes "
                        f"from its last task; default 2); a config error or a NaN fails at once, never retried")
    g.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=True,
                   help=f"start each new {unit} in the Ray actor (process) of a finished one with the same "
                        f"resources (default): saves a process start, the torch import and a CUDA context per "
                        f"{unit}; --no-reuse-actors gives every {unit} a fresh process")


def add_gpu_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPU use inside each trial")
    g.add_argument("--gpu-memory-fraction", type=float, metavar="F",
                   help="cap each trial's GPU memory at this share of its GPU (default: its --gpus-per-trial)")
    g.add_argument("--cpu-fallback", action="store_true",
                   help="for fake GPUs (--num-gpus on a machine without CUDA, in tests): trials given a GPU "
                        "run on the CPU instead of failing")


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray")
    g.add_argument("--address", metavar="ADDRESS",
                   help="join a running Ray: 'auto' (the one on this machine, e.g. from `ray start`, or "
                        "$RAY_ADDRESS), HOST:PORT or ray://HOST:10001 (default: start a Ray of its own on this "
                        "machine, never joining one already running here)")
    g.add_argument("--num-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray (default: all); not with --address")
    g.add_argument("--num-gpus", type=float, metavar="N",
                   help="GPUs declared to the local Ray (default: detected); not with --address")


def add_data_flags(p: argparse.ArgumentParser, *, unit: str, default_dir: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", metavar="DIR", help=f"data directory on every node (default: {default_dir})")
    g.add_argument("--download", action="store_true",
                   help=f"let {unit}s download their data set (CIFAR-100, Fashion-MNIST)")


def add_optuna_storage_flag(p: Any, *, help: str) -> None:
    """``--optuna-storage`` on ``p`` (a parser or one of its groups)."""
    p.add_argument("--optuna-storage", metavar="URL", help=help)


def add_protocol_flags(p: argparse.ArgumentParser) -> None:
    from marktune.results.protocols import DEFAULT_TUNING_TASKS, PROTOCOLS

    g = p.add_argument_group("tuning protocol (what trials are selected on; marktune.results.protocols)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="what trials are selected on: full = the whole stream (default); first-k = the "
                        "first --tuning-tasks tasks only, so evaluate can report tasks no selection saw; "
                        "other-order = this class order, so evaluate reports other orders only")
    g.add_argument("--tuning-tasks", type=int, metavar="K",
                   help=f"first-k: tasks each trial runs (ASHA's max_t; default {DEFAULT_TUNING_TASKS})")


# ---------------------------------------------------------------- reading them back
def ray_settings(args: argparse.Namespace) -> RaySettings:
    return RaySettings(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)


class _NotGiven(list):
    """Stands in for every flag's value while finding the given ones: a list, so that append
    actions (``--set``) can add to it."""


def given_destinations(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags actually on the command line (not their defaults).

    Parses into a namespace that already holds a marker for every destination, so argparse
    sets only what the command line gives.
    """
    names = vars(parser.parse_args(argv))
    namespace = argparse.Namespace(**{name: _NotGiven() for name in names})
    parser.parse_args(argv, namespace=namespace)
    return {name for name, value in vars(namespace).items() if not (isinstance(value, _NotGiven) and not value)}
