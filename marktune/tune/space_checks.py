"""Every value a search space can propose, checked against the learner before Ray starts.

``marktune.tune.spaces`` parses a space file; the checks here decide whether each searched
setting's distribution can only propose values the learner (:class:`MarkConfig`) accepts:

1. **Types.** The distribution must suit the setting's type (MarkConfig's annotation):
   ``uniform``/``loguniform`` only for a float setting (a whole-number setting such as
   ``kb_depth`` takes ``int``/``logint``), a string or true/false setting only a ``choice``,
   and every choice value must be of the setting's type (``null`` only where the setting may
   be empty). A whole float in a choice for an integer setting (``32.0``) is taken as ``32``.
2. **Every value alone.** Each choice value and every integer of an ``int``/``logint`` range
   (all of ``low..high``; a range wider than :data:`INT_VALUES_LIMIT` at its ends and that many
   evenly spaced values, since every integer check of MarkConfig is then a bound) makes, with
   the fixed settings and ``--set``, a MarkConfig that validates: the KB depth against the image
   size, the task split, the mask settings... A float range is checked at its two ends: every
   float check of MarkConfig is an interval (``> 0``, ``>= 0``, ``[0, 1)``), so both ends
   accepted means every value between is.
3. **Combinations.** Every pair of searched settings, over each one's values (an integer range of
   more than :data:`PAIR_VALUES` values at its ends and that many evenly spaced values), so a
   constraint between two searched settings (``kb_depth`` with ``synthetic_image_size``,
   ``num_tasks`` with ``synthetic_classes_per_task``) is caught. The whole cross product of all
   searched settings is checked too when it holds at most :data:`PRODUCT_LIMIT`
   configurations; beyond that a constraint among three or more searched settings at once is not
   (MarkConfig has none today).

Example:
    >>> setting_type("kb_depth"), setting_type("lr_mask"), setting_type("mask_activation")
    (('int', False), ('float', True), ('str', False))
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

from marktune.mark.config import ConfigError, MarkConfig

INT_VALUES_LIMIT = 5000  # an integer range of at most this many values is checked value by value
PAIR_VALUES = 24  # values per setting in the pairwise check
SEED_SETTINGS, SEED_MAX = ("seed", "data_seed"), 2 ** 32 - 1
PRODUCT_LIMIT = 512  # the whole cross product is checked up to this many configurations
FLOAT_KINDS = ("loguniform", "uniform")
INT_KINDS = ("int", "logint")
TYPE_WORDS = {"int": "a whole-number setting (int)", "float": "a number setting (float)",
              "str": "a string setting (str)", "bool": "a true/false setting (bool)",
              "list": "a list setting (list)"}


class SpaceError(ValueError):
    """A search space that cannot run; the message names the file and the problem."""


def setting_type(name: str) -> tuple[str, bool]:
    """(``int`` | ``float`` | ``str`` | ``bool`` | ``list``, may be empty) of a MarkConfig field."""
    annotation = {f.name: str(f.type) for f in dataclasses.fields(MarkConfig)}[name]
    parts = [p.strip() for p in annotation.split("|")]
    base = next(p for p in parts if p != "None")
    return base.split("[")[0], "None" in parts


# ---------------------------------------------------------------- 1. types
def check_kind(where: str, name: str, kind: str, low: float | None = None, high: float | None = None) -> None:
    """Refuse a distribution that cannot propose a value of the setting's type."""
    typ, _ = setting_type(name)
    if typ == "list":
        raise SpaceError(f"{where}: {name} is {TYPE_WORDS[typ]} and cannot be searched (a search "
                         f"proposes single values); set it in fixed: or with --set {name}=[...]")
    if kind == "choice":
        return
    if typ == "int" and kind in FLOAT_KINDS:
        ends = f"low: {_whole(low)}, high: {_whole(high)}" if low is not None and high is not None else "whole low and high"
        raise SpaceError(f"{where}: {name} is {TYPE_WORDS[typ]}, but a {kind} distribution proposes "
                         f"fractions (such as {_fraction_between(low, high)}) that every trial would refuse; "
                         f"use `type: {'logint' if kind == 'loguniform' else 'int'}` ({ends}), or a choice "
                         "of whole numbers")
    if typ in ("str", "bool"):
        values = "[true, false]" if typ == "bool" else "[...] of its strings"
        raise SpaceError(f"{where}: {name} is {TYPE_WORDS[typ]}, but a {kind} distribution proposes "
                         f"numbers; use `type: choice` with `values: {values}`")


def check_choice_values(where: str, name: str, values: Sequence[Any]) -> tuple:
    """The choice's values, each of the setting's type (whole floats of an int setting made
    ints); refuse a wrong type, a repeat, or an empty value the setting does not allow."""
    typ, nullable = setting_type(name)
    out: list[Any] = []
    for value in values:
        value = _of_type(where, name, typ, nullable, value)
        if any(type(v) is type(value) and v == value for v in out):
            raise SpaceError(f"{where}: {name}: choice value {value!r} appears twice; give each value once")
        out.append(value)
    return tuple(out)


def _of_type(where: str, name: str, typ: str, nullable: bool, value: Any) -> Any:
    def refuse(why: str) -> SpaceError:
        return SpaceError(f"{where}: {name} is {TYPE_WORDS[typ]}; choice value {value!r} "
                          f"({type(value).__name__}) {why}")

    if value is None:
        if nullable:
            return None
        raise refuse(f"is empty, which {name} may not be; give a value")
    if isinstance(value, (list, dict, tuple)):
        raise refuse("is not a single value; a choice lists single values")
    if typ == "bool":
        if isinstance(value, bool):
            return value
        raise refuse("is not true or false")
    if typ == "str":
        if isinstance(value, str):
            return value
        hint = " (YAML reads a bare yes, no, on, off, true or false as true/false: quote it)" \
            if isinstance(value, bool) else \
            f" (quote it: '{value}')"
        raise refuse(f"is not a string{hint}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse("is not a number")
    if not math.isfinite(value):
        raise refuse("is not finite")
    if typ == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise refuse("is not a whole number")
            return int(value)
    return value


# ---------------------------------------------------------------- 2. every value alone
def range_values(kind: str, low: float, high: float, *, limit: int = INT_VALUES_LIMIT) -> list[Any]:
    """The values of a range the checks try: every integer of ``low..high`` (up to ``limit`` of
    them, else the ends and ``limit`` evenly spaced ones), or a float range's two ends."""
    if kind not in INT_KINDS:
        return [low, high]
    lo, hi = int(low), int(high)
    if hi - lo + 1 <= limit:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (limit - 1)
    return sorted({lo, hi, *(lo + round(i * step) for i in range(limit))})


def check_values(where: str, base: Mapping[str, Any], params: Iterable[Any]) -> None:
    """Each param's every value (:func:`range_values`, or its choices) alone on top of ``base``
    (benchmark, fixed settings, --set). A param has ``name``, ``kind``, ``values``, ``low``,
    ``high`` and ``describe()`` (``marktune.tune.spaces.Param``)."""
    for param in params:
        refused: list[tuple[Any, str]] = []
        values = _values(param)
        for value in values:
            error = _refusal({**base, param.name: value})
            if error is not None:
                refused.append((value, error))
        if refused:
            value, error = refused[0]
            message = f"{where}: searched {param.describe()}: value {value!r} is refused: {error}"
            if len(refused) > 1 or len(values) > 2:
                bad = {v for v, _ in refused}
                ok = [v for v in values if v not in bad]
                wide = param.kind in INT_KINDS and int(param.high) - int(param.low) + 1 > len(values)
                message += (f" ({f'of {len(values)} values checked, ' if wide else ''}"
                            f"refused: {_listing([v for v, _ in refused])}; accepted: "
                            f"{_listing(ok) if ok else 'none'}): narrow the range or list the accepted values")
            raise SpaceError(message)


# ---------------------------------------------------------------- 3. combinations
def check_combinations(where: str, base: Mapping[str, Any], params: Sequence[Any]) -> None:
    """Every pair of searched settings over their values, and the whole cross product when it is
    small (:data:`PRODUCT_LIMIT`); run after :func:`check_values` (each value alone is fine)."""
    params = list(params)
    pair_values = {p.name: _values(p, limit=PAIR_VALUES) for p in params}
    for a, b in itertools.combinations(params, 2):
        for va, vb in itertools.product(pair_values[a.name], pair_values[b.name]):
            error = _refusal({**base, a.name: va, b.name: vb})
            if error is not None:
                raise SpaceError(f"{where}: searched {a.name}={va!r} together with {b.name}={vb!r} is "
                                 f"refused: {error} (each alone is accepted: narrow {a.name}'s or "
                                 f"{b.name}'s values)")
    if len(params) < 3:
        return
    every = [_values(p) for p in params]
    if math.prod(len(v) for v in every) > PRODUCT_LIMIT:
        return
    for combo in itertools.product(*every):
        error = _refusal({**base, **{p.name: v for p, v in zip(params, combo)}})
        if error is not None:
            settings = ", ".join(f"{p.name}={v!r}" for p, v in zip(params, combo))
            raise SpaceError(f"{where}: searched settings {settings} together are refused: {error}")


# ---------------------------------------------------------------- helpers
def _values(param: Any, *, limit: int = INT_VALUES_LIMIT) -> list[Any]:
    if param.kind == "choice":
        return list(param.values)
    return range_values(param.kind, param.low, param.high, limit=limit)


def _refusal(values: Mapping[str, Any]) -> str | None:
    try:
        MarkConfig.from_dict(values)
    except ConfigError as err:
        return str(err)
    return seed_refusal(values)


def seed_refusal(values: Mapping[str, Any]) -> str | None:
    """numpy's seeds are 0..2**32-1; a larger ``seed``/``data_seed`` failed in every trial (a
    ValueError in ``RandomState``), so it is refused here too until MarkConfig bounds them."""
    for key in SEED_SETTINGS:
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > SEED_MAX:
            return f"{key} must be in 0..{SEED_MAX} (numpy's seed range; got {value!r})"
    return None


def _listing(values: list[Any], most: int = 12) -> str:
    if len(values) > most:
        return ", ".join(map(repr, values[:most // 2])) + ", ..., " + ", ".join(map(repr, values[-most // 2:]))
    return ", ".join(map(repr, values))


def _whole(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _fraction_between(low: float | None, high: float | None) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "2.5"
    mid = (low + high) / 2
    return f"{mid + 0.5 if float(mid).is_integer() else mid:g}"
