"""How config files and ``--opts`` values are read as YAML: PyYAML's safe loader with two changes.

* **Duplicate keys are refused.** YAML says the keys of a mapping are unique, yet PyYAML keeps the last
  of two equal keys without a word, so a file that sets ``schedule.lr`` twice trains with whichever comes
  last. :class:`ConfigLoader` raises :class:`DuplicateKeyError` with the dotted key and both lines instead.
  Merge keys (``<<: *defaults``) still override what they merge, as YAML intends.
* **Floats in exponent form without a dot** (``1e-3``, ``5E4``, ``2.5e3``) are floats, as in YAML 1.2 and
  JSON. PyYAML follows YAML 1.1, which needs a dot and a signed exponent (``1.0e-3``), and reads ``1e-3``
  as the string "1e-3".

Everything else is PyYAML's ``SafeLoader`` (YAML 1.1 booleans such as ``on`` / ``off``, ``.nan``, ``.inf``, ...);
the config validation refuses non-finite numbers. Only the config loader uses this module; annotation and
results files are JSON.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["ConfigLoader", "DuplicateKeyError", "describe_yaml_error", "load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# The floats YAML 1.2 adds to YAML 1.1's: an exponent without a dot, or with an unsigned exponent.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML document sets the same key twice.

    Attributes: ``key`` (dotted path from the document's root, e.g. "schedule.lr"), ``line`` (1-based line of
    the repeated key) and ``first_line`` (where it was first set).
    """

    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: duplicate key '{key}' (first set at line {first_line}); YAML keeps only "
                         "the last value, so remove one of them")
        self.key, self.line, self.first_line = key, line, first_line


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads ``1e-3`` as a float (see the module)."""

    def construct_document(self, node: Node) -> Any:
        self._checked_nodes: set[int] = set()
        self._check_unique_keys(node, "")
        return super().construct_document(node)

    def _check_unique_keys(self, node: Node, path: str) -> None:
        """Raise DuplicateKeyError for the first mapping (depth first) holding a scalar key twice; ``path`` is
        the node's dotted place in the document ("" at the root)."""
        if id(node) in self._checked_nodes:  # an alias of a node seen before (possibly of its own parent)
            return
        self._checked_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self._check_unique_keys(item, f"{path}[{index}]")
            return
        if not isinstance(node, MappingNode):
            return
        first_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *base" merges, its keys may be overridden
                self._check_unique_keys(value_node, path)
                continue
            name = "?"
            if isinstance(key_node, ScalarNode):
                name = self.construct_object(key_node)  # the key's value: 'lr' and "lr" are one key
                line = key_node.start_mark.line + 1
                if name in first_lines:
                    raise DuplicateKeyError(f"{path}.{name}" if path else str(name), line, first_lines[name])
                first_lines[name] = line
            self._check_unique_keys(value_node, f"{path}.{name}" if path else str(name))


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`ConfigLoader`.

    Raises:
        yaml.YAMLError: a syntax error, or :class:`DuplicateKeyError`.
    """
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """One line for a YAML error: "line L, column C: <problem> (<context> at line L')" (PyYAML's own text
    spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError) and (err.problem or err.context):
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = ""
        if err.context and err.problem:
            context_line = f" at line {err.context_mark.line + 1}" if err.context_mark is not None else ""
            context = f" ({err.context}{context_line})"
        return f"{where}{err.problem or err.context}{context}"
    if isinstance(err, yaml.reader.ReaderError):
        return (f"character #x{err.character:04x} at position {err.position} is not allowed in YAML "
                "(a binary file?)")
    return " ".join(str(err).split())
