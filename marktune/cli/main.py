"""The ``marktune`` console script: one command, four subcommands (as ``ray up`` or ``optuna``).

    marktune search --space fmnist       # = python -m marktune.search --space fmnist
    marktune evaluate results/<name>     # = python -m marktune.evaluate results/<name>
    marktune report results/<name>       # = python -m marktune.report results/<name>
    marktune run --config best_config.yaml

Each subcommand is its own module's ``main`` with the rest of the command line, so
``marktune search --help`` is the search's own help.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "search": "run a hyperparameter search (Ray Tune + Optuna + ASHA)",
    "evaluate": "re-run a search's best configurations over fresh seeds",
    "report": "write a search's report.html (no Ray needed)",
    "run": "run one MARK continual sequence from a config",
}


def _usage() -> str:
    lines = ["usage: marktune COMMAND [options]   (marktune COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10}{what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"marktune: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"marktune.cli.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
