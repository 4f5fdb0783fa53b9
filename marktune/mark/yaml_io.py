"""Reading the YAML files a user writes (``run --config``, search spaces), duplicate keys refused.

PyYAML keeps the last of two equal keys in a mapping without a word: a second top-level
``fixed:`` block in a space file silently replaced the first, dropping its settings. Here a
repeated key, at any nesting level, is an error naming the key, where it sits and both lines.

Example:
    >>> load_yaml_text("fixed: {epochs: 3}\\nsearch: {}\\n")
    {'fixed': {'epochs': 3}, 'search': {}}
    >>> try:
    ...     load_yaml_text("fixed:\\n  epochs: 3\\nfixed:\\n  epochs: 4\\n")
    ... except DuplicateKeyError as err:
    ...     print(str(err).split(";")[0])
    line 3: key 'fixed' appears twice (first at line 1)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that holds one key twice; the message names the key and both lines."""

    def __init__(self, key_path: str, line: int, first_line: int) -> None:
        self.key_path, self.line, self.first_line = key_path, line, first_line
        super().__init__(f"line {line}: key {key_path!r} appears twice (first at line {first_line}); "
                         "the second would silently replace the first: merge them into one entry")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a repeated key (keys a ``<<`` merge brings in
    may still be overridden, as YAML allows)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._check_unique(node, (), set())
        return self.construct_document(node)

    def _check_unique(self, node: Node, path: tuple[str, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive anchor)
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, path + (f"[{i}]",), seen)
        elif isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    self._check_unique(value_node, path, seen)
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:  # a list or mapping as a key: SafeLoader's own error follows
                    continue
                name = ".".join(path + (str(key),)).replace(".[", "[")
                line = key_node.start_mark.line + 1
                if key in first:
                    raise DuplicateKeyError(name, line, first[key])
                first[key] = line
                self._check_unique(value_node, path + (str(key),), seen)


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a repeated key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: Path, *, error: type[Exception]) -> Any:
    """The YAML in ``path`` (None for an empty file), read with :func:`load_yaml_text`; an
    unreadable file, a repeated key or bad YAML raises ``error`` with the path and what is wrong."""
    try:
        return load_yaml_text(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {path} as a UTF-8 text file: {err}") from None
    except DuplicateKeyError as err:
        raise error(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {err}") from None
