"""What an evaluation concludes: the paired table, the verdict sentence, the protocol gap.

Built from the rows of ``evaluation.csv`` and the evaluation's record (``evaluation.json``:
protocol, seeds, class orders, benchmark, the search's validation ACC of each re-run trial),
so ``marktune.evaluate`` writes it and ``marktune.report`` reads it back without Ray.

The figure a protocol reports (its *headline*) is test ACC after the last task:
over the whole stream for ``full`` and ``other-order``, over the held-out tasks k..T-1 for
``first-k``. Every configuration is compared with the default on that figure, pair by pair
(``marktune.results.statistics.paired_difference``).

Example:
    >>> from marktune.results.protocols import SearchProtocol
    >>> rows = [{"configuration": c, "kind": k, "source_trial": t, "data_seed": 0, "seed": s,
    ...          "status": "COMPLETE", "test_acc": v, "bwt": 0.0, "heldout_test_acc": v, "heldout_bwt": 0.0}
    ...         for c, k, t in (("best 1 (trial a)", "best", "a"), ("default (digits)", "default", ""))
    ...         for s, v in ((1000, 0.90 if k == "best" else 0.93), (1001, 0.91 if k == "best" else 0.95))]
    >>> record = EvaluationRecord(protocol=SearchProtocol(stream_tasks=5), seeds=[1000, 1001], data_seeds=[0],
    ...                           benchmark="digits", searched_benchmark="digits", search_val={"a": 0.97},
    ...                           default_is_space=True)
    >>> print(conclude(rows, record).sentence)
    On 2 seeds x 1 order, the best configuration is not distinguishable from the space's default (−3.50 points, 95 % CI −9.9 to +2.9); no collapse or error in 2 runs (worst 90.0 %), the default: no collapse or error in 2 runs (worst 93.0 %).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from marktune.results.cost import CostComparison, Robustness, compare, cost_words, non_inferior, robustness
from marktune.results.evaluation_table import format_mean_std, read_csv
from marktune.results.files import write_atomic
from marktune.results.protocols import SearchProtocol, protocol_from_settings
from marktune.results.statistics import (BETTER, METHOD, UNDECIDED, WORSE, PairedDifference, mean_std,
                                 paired_difference, paired_values, rank_stability)

RECORD_FILE = "evaluation.json"
HISTORY_DIR = "evaluations"  # one csv + json per protocol evaluated, for the report's protocol gap


@dataclass
class EvaluationRecord:
    """What an evaluation ran, beside its rows (written as ``evaluation.json``)."""

    protocol: SearchProtocol
    seeds: list[int]
    data_seeds: list[int]
    benchmark: str  # evaluated on
    searched_benchmark: str
    search_val: dict[str, float] = field(default_factory=dict)  # source trial -> the search's val ACC
    default_is_space: bool = True  # the default is a space file's (else the trials' shared settings)
    # the non-inferiority margin (a fraction of ACC; None: none stated) and where it comes from
    margin: float | None = None
    margin_source: str = ""

    @property
    def tag(self) -> str:
        """File name of this evaluation in ``evaluations/``: the protocol, and the target benchmark."""
        return self.protocol.name + ("" if self.benchmark == self.searched_benchmark else f"-on-{self.benchmark}")

    def to_json(self) -> dict[str, Any]:
        return {**self.protocol.to_settings(), "seeds": self.seeds, "data_seeds": self.data_seeds,
                "benchmark": self.benchmark, "searched_benchmark": self.searched_benchmark,
                "search_val": self.search_val, "default_is_space": self.default_is_space,
                "margin": self.margin, "margin_source": self.margin_source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EvaluationRecord":
        protocol = protocol_from_settings(data, stream_tasks=int(data.get("stream_tasks") or 0),
                                          searched_data_seed=int(data.get("searched_data_seed") or 0))
        return cls(protocol=protocol, seeds=list(data.get("seeds") or []), data_seeds=list(data.get("data_seeds") or []),
                   benchmark=str(data.get("benchmark")), searched_benchmark=str(data.get("searched_benchmark")),
                   search_val=dict(data.get("search_val") or {}), default_is_space=bool(data.get("default_is_space", True)),
                   margin=_margin(data.get("margin")), margin_source=str(data.get("margin_source") or ""))


@dataclass
class ConfigurationResult:
    configuration: str
    kind: str
    source_trial: str
    pairs: int  # complete runs
    test_acc: tuple[float, float]
    bwt: tuple[float, float]
    heldout_acc: tuple[float, float]
    heldout_bwt: tuple[float, float]
    headline: tuple[float, float]
    difference: PairedDifference | None  # against the default; None for the default itself
    cost: CostComparison | None = None  # against the default: cost ratios and robustness; None for the default
    robustness: Robustness | None = None  # how its runs ended


@dataclass
class Conclusion:
    record: EvaluationRecord
    results: list[ConfigurationResult]
    tau: float
    tau_items: int
    sentence: str

    @property
    def best(self) -> ConfigurationResult | None:
        return next((r for r in self.results if r.kind == "best"), None)


def headline_key(protocol: SearchProtocol) -> str:
    """The evaluation.csv column a protocol reports and compares on."""
    return "heldout_test_acc" if protocol.name == "first-k" else "test_acc"


def headline_words(record: EvaluationRecord) -> str:
    p = record.protocol
    if p.name == "first-k":
        return f"test ACC on held-out tasks {p.tuning_tasks + 1}-{p.stream_tasks}"
    if p.name == "other-order":
        return "test ACC on class orders the search never ran"
    return "test ACC over the whole stream"


def conclude(rows: Sequence[Mapping[str, Any]], record: EvaluationRecord) -> Conclusion:
    """The paired table, rank stability and verdict sentence of an evaluation's rows."""
    key = headline_key(record.protocol)
    ok = [r for r in rows if r.get("status") == "COMPLETE"]
    labels = list(dict.fromkeys(r["configuration"] for r in rows))
    default = next((r["configuration"] for r in rows if r.get("kind") == "default"), None)
    results = []
    for label in labels:
        mine = [r for r in ok if r["configuration"] == label]
        first = next(r for r in rows if r["configuration"] == label)
        diff = None
        if default is not None and label != default:
            values, reference, _ = paired_values(ok, configuration=label, reference=default, metric=key)
            diff = paired_difference(values, reference)
        results.append(ConfigurationResult(
            configuration=label, kind=str(first.get("kind", "")), source_trial=str(first.get("source_trial", "")),
            pairs=len(mine), test_acc=mean_std(r.get("test_acc") for r in mine),
            bwt=mean_std(r.get("bwt") for r in mine),
            heldout_acc=mean_std(r.get("heldout_test_acc") for r in mine),
            heldout_bwt=mean_std(r.get("heldout_bwt") for r in mine),
            headline=mean_std(r.get(key) for r in mine), difference=diff,
            cost=compare(rows, label, default, key=key) if diff is not None else None,
            robustness=robustness(rows, label, key=key)))
    best = [r for r in results if r.kind == "best"]
    tau = rank_stability([record.search_val.get(r.source_trial, math.nan) for r in best],
                         [r.headline[0] for r in best])
    conclusion = Conclusion(record=record, results=results, tau=tau, tau_items=len(best), sentence="")
    conclusion.sentence = verdict_sentence(conclusion)
    return conclusion


def verdict_sentence(conclusion: Conclusion, result: ConfigurationResult | None = None,
                     name: str = "the best configuration") -> str:
    """One sentence: is the search's best configuration (or ``result``, called ``name``) better than the default?"""
    record = conclusion.record
    seeds, orders = len(record.seeds), len(record.data_seeds)
    shape = (f"On {seeds} seed{'s' * (seeds != 1)} x {orders} "
             f"{'held-out ' if record.protocol.name == 'other-order' else ''}class order{'s' * (orders != 1)}"
             if record.protocol.name == "other-order" else
             f"On {seeds} seed{'s' * (seeds != 1)} x {orders} order{'s' * (orders != 1)}")
    if record.benchmark != record.searched_benchmark:
        shape += f" of {record.benchmark} (searched on {record.searched_benchmark})"
    reference = "the space's default" if record.default_is_space else "the default configuration"
    where = ""
    if record.protocol.name == "first-k":
        where = f" on the held-out tasks {record.protocol.tuning_tasks + 1}-{record.protocol.stream_tasks}"
    best = result or conclusion.best
    if best is None or best.difference is None or best.difference.n == 0:
        return (f"{shape}, {name} cannot be compared with {reference}: no (data seed, seed) "
                "pair finished for both.")
    d = best.difference
    word = {BETTER: "is better than", WORSE: "is worse than", UNDECIDED: "is not distinguishable from"}[d.verdict]
    margin = record.margin
    within, not_within = "", ""
    if d.verdict == UNDECIDED and margin is not None:
        if non_inferior(d.low, margin):
            word = "is as accurate as"
            within = f" within {100 * margin:.2f} points"
        else:
            not_within = f", and not shown as accurate within {100 * margin:.2f} points"
    if d.n < 2:
        numbers = f"{_points(d.mean, 2)} points on a single pair, no interval"
    else:
        numbers = f"{_points(d.mean, 2)} points, 95 % CI {_points(d.low, 1)} to {_points(d.high, 1)}"
    text = f"{shape}, {name} {word} {reference}{where}{within} ({numbers}){not_within}"
    if best.cost is not None:
        cost = cost_words(best.cost)
        text += f", {cost}" if cost else ""
        text += (f"; {best.cost.mine.words()}{_worst(best.cost.mine.worst)}, the default: "
                 f"{best.cost.default.words()}{_worst(best.cost.default.worst)}")
    return text + "."


def _worst(value: float) -> str:
    return f" (worst {100 * value:.1f} %)" if math.isfinite(value) else ""


def _margin(value: Any) -> float | None:
    try:
        margin = float(value)
    except (TypeError, ValueError):
        return None
    return margin if math.isfinite(margin) and margin >= 0 else None


def paired_table_head(record: "EvaluationRecord") -> list[str]:
    """The paired table's columns (held-out ones under first-k), for the markdown and the report."""
    head = ["configuration", "pairs", "test ACC (%)", "BWT (%)"]
    if record.protocol.name == "first-k":
        head += ["held-out ACC (%)", "held-out BWT (%)"]
    return head + ["Δ vs default (points)", "95 % CI", "verdict", "FLOPs", "params", "seconds",
                   "collapsed / errored", "worst (%)"]


def format_markdown(conclusion: Conclusion) -> str:
    """The verdict sentence first, then what was selected on, the paired table and rank stability."""
    record = conclusion.record
    first_k = record.protocol.name == "first-k"
    head = paired_table_head(record)
    lines = [conclusion.sentence, "", f"Selection: {record.protocol.label()}.", "",
             f"Paired against the default on {headline_words(record)}: every configuration ran on the same "
             f"(data_seed, seed) pairs, data seeds {record.data_seeds} x seeds {record.seeds}. "
             f"Interval: {METHOD}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in conclusion.results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in result_cells(r, first_k=first_k)) + " |")
    lines += ["", rank_sentence(conclusion)]
    return "\n".join(lines) + "\n"


def result_cells(r: ConfigurationResult, *, first_k: bool) -> list[str]:
    cells = [r.configuration, str(r.pairs), format_mean_std(r.test_acc), format_mean_std(r.bwt, sign=True)]
    if first_k:
        cells += [format_mean_std(r.heldout_acc), format_mean_std(r.heldout_bwt, sign=True)]
    d = r.difference
    if d is None:
        cells += ["(reference)", "", "", "1", "1", "1"]
    else:
        ci = "-" if not math.isfinite(d.low) else f"{_points(d.low, 2)} to {_points(d.high, 2)}"
        cells += [_points(d.mean, 2) if math.isfinite(d.mean) else "-", ci, d.verdict]
        cells += [f"{v:.2f}" if r.cost is not None and math.isfinite(v) else "-"
                  for v in ((r.cost.flops, r.cost.params, r.cost.seconds) if r.cost is not None else (math.nan,) * 3)]
    robust = r.robustness
    cells += [f"{robust.collapsed} / {robust.errored} of {robust.runs}" if robust else "",
              f"{100 * robust.worst:.1f}" if robust and math.isfinite(robust.worst) else ""]
    return cells


def rank_sentence(conclusion: Conclusion) -> str:
    if not math.isfinite(conclusion.tau) and conclusion.tau_items < 2:
        return (f"Rank stability: needs at least two re-run configurations with results "
                f"({conclusion.tau_items} here; use --top 2 or more).")
    if not math.isfinite(conclusion.tau):
        return (f"Rank stability: Kendall's tau is undefined for these {conclusion.tau_items} re-run configurations: "
                "the search's validation ACC (or the evaluation's means) tie, so no pair is ordered.")
    return (f"Rank stability: Kendall's tau = {conclusion.tau:+.2f} (scipy.stats.kendalltau) between the search's "
            f"validation ranking of the {conclusion.tau_items} re-run configurations and this evaluation's ranking "
            f"on {headline_words(conclusion.record)} (+1: same order, -1: reversed).")


# ---------------------------------------------------------------- files
def save(directory: Path, record: EvaluationRecord, csv_path: Path) -> None:
    """``evaluation.json`` beside ``evaluation.csv``, and both under ``evaluations/<tag>.*``."""
    text = json.dumps(record.to_json(), indent=1)
    write_atomic(directory / RECORD_FILE, text)
    history = directory / HISTORY_DIR
    history.mkdir(exist_ok=True)
    write_atomic(history / f"{record.tag}.json", text)
    write_atomic(history / f"{record.tag}.csv", csv_path.read_bytes())


def load_record(path: Path) -> EvaluationRecord | None:
    try:
        return EvaluationRecord.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError, TypeError):
        return None


def load_all(directory: Path) -> list[tuple[EvaluationRecord, list[dict[str, Any]]]]:
    """Every evaluation kept under ``evaluations/`` (one per protocol and target benchmark)."""
    out = []
    for meta in sorted((directory / HISTORY_DIR).glob("*.json")):
        record = load_record(meta)
        table = meta.with_suffix(".csv")
        if record is not None and table.is_file():
            out.append((record, read_csv(table)))
    return out


def rewrite_best_config_comment(path: Path, conclusion: Conclusion) -> bool:
    """Put the verdict into ``best_config.yaml``'s comment (the settings stay as they are)."""
    if not path.is_file():
        return False
    import yaml

    lines = path.read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    kept = [ln for ln in lines if ln.startswith("# Best of") or ln.startswith("# Run it")]
    best, sentence = conclusion.best, conclusion.sentence
    try:
        trial_id = str((yaml.safe_load("\n".join(body)) or {}).get("trial_id", ""))
    except (yaml.YAMLError, AttributeError):
        trial_id = ""
    mine = next((r for r in conclusion.results if r.kind == "best" and r.source_trial == trial_id), None)
    if mine is not None and best is not None and mine is not best:  # a tie on validation ACC, broken otherwise
        best, sentence = mine, verdict_sentence(conclusion, mine, f"this configuration ({mine.configuration})")
    comment = kept[:1] + [f"# Evaluation ({conclusion.record.protocol.name}): {sentence}"]
    if best is not None and (best.difference is None or best.difference.verdict != BETTER):
        comment.append("# This configuration is NOT shown better than the default by that evaluation: "
                       "report it as such, or prefer the default.")
    comment += kept[1:]
    write_atomic(path, "\n".join(comment + body) + "\n")
    return True


# ---------------------------------------------------------------- protocol gap
def gap_columns(record: EvaluationRecord, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, tuple]]]:
    """Columns of the protocol-gap table from one evaluation: (heading, configuration -> mean, std).

    A first-k evaluation gives the whole stream and the held-out tasks; an evaluation that ran
    the searched class order and others gives each side; a retargeted one names its benchmark.
    """
    ok = [r for r in rows if r.get("status") == "COMPLETE"]
    where = "" if record.benchmark == record.searched_benchmark else f" on {record.benchmark}"
    searched = record.protocol.searched_data_seed

    def column(key: str, keep) -> dict[str, tuple]:
        groups: dict[str, list[float]] = {}
        for r in ok:
            if keep(r):
                groups.setdefault(r["configuration"], []).append(r.get(key))
        return {label: mean_std(values) for label, values in groups.items()}

    columns = []
    seeds = {r.get("data_seed") for r in ok}
    same_benchmark = record.benchmark == record.searched_benchmark
    if same_benchmark and searched in seeds and len(seeds) > 1:
        parts = [("searched class order", lambda r: r.get("data_seed") == searched),
                 ("other class orders", lambda r: r.get("data_seed") != searched)]
    elif same_benchmark and searched in seeds:
        parts = [("searched class order", lambda r: True)]
    else:
        parts = [("other class orders" if same_benchmark else "", lambda r: True)]
    for words, keep in parts:
        suffix = f", {words}" if words else ""
        if record.protocol.name == "first-k":
            k, T = record.protocol.tuning_tasks, record.protocol.stream_tasks
            columns.append((f"{record.tag}: whole stream (tasks 1-{k} selected on){where}{suffix}",
                            column("test_acc", keep)))
            columns.append((f"{record.tag}: held-out tasks {k + 1}-{T}{where}{suffix}",
                            column("heldout_test_acc", keep)))
        else:
            columns.append((f"{record.tag}: test ACC{where}{suffix}", column("test_acc", keep)))
    return columns


def _points(value: float, digits: int) -> str:
    return f"{100 * value:+.{digits}f}".replace("-", "−")
