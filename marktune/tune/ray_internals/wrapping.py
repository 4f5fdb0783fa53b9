"""Putting a wrapper in place of a Ray method, and finding Ray's own under it."""
from __future__ import annotations

from typing import Callable

HERE = "marktune/tune/ray_internals/"  # named in every LibraryChanged message


class LibraryChanged(RuntimeError):
    """The installed Ray or Optuna lacks an attribute or signature marktune relies on."""


def unwrapped(owner, name: str):
    """``owner.name`` as Ray defines it, under any wrapper of :func:`wrap_method`."""
    method = getattr(owner, name)
    return getattr(method, "marktune_original", method)


def wrap_method(owner, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Put ``wrap(Ray's own method)`` in place of ``owner.name``; installing it again replaces
    the earlier wrapper rather than wrapping it (the newest arguments win)."""
    original = unwrapped(owner, name)
    replacement = wrap(original)
    replacement.marktune_original = original  # type: ignore[attr-defined]
    setattr(owner, name, replacement)
