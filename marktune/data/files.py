"""Finding, reading and fetching data files: where to look, what "not found" says, the fetch lock.

A benchmark module's reader raises :class:`DataProblem` (files not found, or unreadable);
:func:`obtain` turns that into a :class:`~marktune.data.base.DatasetMissingError` that says
where it looked and how to get the data, or fetches the files under a lock
(:func:`ensure_dataset`) when asked to download.

Example:
    >>> problem_message("CIFAR-100", DataProblem([Path("/data")]), "Get it.")
    'CIFAR-100 not found. Looked in: /data. Get it.'
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from marktune.data.base import DatasetMissingError, Source


# What a data set's own pickle may build: numpy arrays and plain containers. Anything else (a
# crafted file's os.system, say) is refused before it is called: unpickling otherwise runs code.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "bytearray"),
    ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"it asks to build {module}.{name}, which a data set's pickle never holds (only numpy "
                "arrays, lists and dicts are read: unpickling anything else could run code)")
        return super().find_class(module, name)


def load_data_pickle(f: BinaryIO) -> Any:
    """``pickle.load(f, encoding="latin1")`` for a data set's own files (CIFAR-100's Python 2
    pickles, MiniImageNet's): only numpy arrays and plain containers are built, so a crafted
    file cannot run code. Keys and shapes are the caller's to check.

    >>> import io, numpy as np
    >>> load_data_pickle(io.BytesIO(pickle.dumps({"labels": np.arange(3)})))["labels"].tolist()
    [0, 1, 2]
    """
    return _DataUnpickler(f, encoding="latin1").load()


def default_data_dir() -> Path:
    """``$MARKTUNE_DATA``, else ``$XDG_CACHE_HOME/marktune``, else ``~/.cache/marktune``."""
    if os.environ.get("MARKTUNE_DATA"):
        return Path(os.environ["MARKTUNE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "marktune"


def ensure_dataset(directory: str | Path, name: str, *, is_complete: Callable[[], bool],
                   fetch: Callable[[], None], attempts: int = 2) -> None:
    """Make the data set ``name`` in ``directory`` complete, fetching under a file lock.

    The lock (``directory/.<name>.lock``) lets processes that share a directory (a cluster's
    workers) fetch it once: the others wait, then find it complete. A fetch that leaves it
    incomplete (half-written files of a killed run, a torn download) is redone, at most
    ``attempts`` times in all.
    """
    from filelock import FileLock  # local: only needed when fetching

    if is_complete():
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f".{name}.lock")):
        for _ in range(attempts):
            if is_complete():  # another process may have fetched it while we waited
                return
            fetch()
        if is_complete():
            return
    raise DatasetMissingError(f"{name}: fetched {attempts} times into {directory}, but the files "
                              "are still incomplete or unreadable; delete them and try again")


class DataProblem(Exception):
    """Raised by a reader: files not found (``places`` looked in) or unreadable (``reason``)."""

    def __init__(self, places: Sequence[Path], reason: str | None = None, *, wrong_format: bool = False):
        super().__init__(reason or "not found")
        self.places = list(places)
        self.reason = reason
        # complete files that hold something else (a missing key): re-fetching would not help
        self.wrong_format = wrong_format


def require_keys(path: Path, entry: Any, keys: Sequence[str], holds: str) -> dict:
    """The unpickled ``entry`` as a dict with str keys; a missing key says what the file should hold."""
    if not isinstance(entry, dict):
        raise DataProblem([path], f"{path.name} holds a {type(entry).__name__}, not a dict. {holds}",
                          wrong_format=True)
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataProblem([path], f"{path.name} has no {' or '.join(repr(k) for k in missing)} key (its keys: "
                                   f"{', '.join(map(repr, sorted(map(str, entry)))) or 'none'}). {holds}",
                           wrong_format=True)
    return entry


def obtain(read: Callable[[], Source], *, title: str, name: str, directory: Path,
           download: bool, fetch: Callable[[], None] | None, how_to_get: str) -> Source:
    """``read()``; if that fails, fetch under a lock (``download``) or raise :class:`DatasetMissingError`."""
    try:
        return read()
    except DataProblem as problem:
        if not (download and fetch is not None):
            raise DatasetMissingError(problem_message(title, problem, how_to_get)) from None

    loaded: dict[str, Source] = {}

    def is_complete() -> bool:
        # The validation after a fetch is the real load, kept so the files are read once.
        try:
            loaded["source"] = read()
            return True
        except DataProblem:
            return False

    try:
        ensure_dataset(directory, name, is_complete=is_complete, fetch=fetch)
    except DatasetMissingError:
        raise
    except Exception as err:  # no network, disk full, a torchvision error: say so plainly
        raise DatasetMissingError(f"{title}: downloading into {directory} failed ({type(err).__name__}: "
                                  f"{err}). {how_to_get}") from None
    return loaded["source"]


def problem_message(title: str, problem: DataProblem, how_to_get: str) -> str:
    places = ", ".join(str(p) for p in problem.places)
    if problem.reason is None:
        return f"{title} not found. Looked in: {places}. {how_to_get}"
    if problem.wrong_format:
        return f"{title} files in {places} are not in the expected format: {problem.reason}"
    return (f"{title} files in {places} are unreadable ({problem.reason}); they may be half-written. "
            f"Delete them and get them again. {how_to_get}")


def torchvision_fetch(dataset_class_name: str, root: Path) -> None:
    import torchvision.datasets  # local: importing torchvision costs a second

    getattr(torchvision.datasets, dataset_class_name)(root=str(root), download=True)


def locate_folder(root: Path, folder_name: str, files: tuple[str, ...]) -> Path:
    """The folder holding all ``files``: ``root/folder_name``, or ``root`` (which may be that folder)."""
    places = [root] if root.name == folder_name else [root / folder_name, root]
    folder = next((p for p in places if all((p / f).is_file() for f in files)), None)
    if folder is None:
        raise DataProblem(places)
    return folder
