"""Read YAML into plain Python values while remembering where each value stood.

PyYAML's composer gives nodes with marks; we walk them ourselves so that every
value's path (("queues", "web_tasks", "bindings", 0)) maps to a `file:line:column`,
duplicate keys are caught (PyYAML silently keeps the last), and `${VAR:-default}`
is expanded in every string.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

Path = tuple  # tuple[str | int, ...]

# Aliases let a small file describe a huge tree ("billion laughs"); no real
# routing.yaml comes near this many values.
MAX_NODES = 100_000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\$")


@dataclass(frozen=True, order=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class Document:
    """A parsed file: its data, where each path came from, and what went wrong."""

    data: Any
    positions: dict
    errors: list  # list[tuple[Position, str, str]] : (where, message, hint)
    loader: yaml.SafeLoader = field(default_factory=lambda: yaml.SafeLoader(""))
    nodes_seen: int = 0

    def position(self, path: Path) -> Position:
        """The position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), Position(1, 1))


def expand_variables(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand `${VAR}` and `${VAR:-default}` (default used when VAR is unset or empty,
    as in the shell); `$$` is a literal `$`. Returns the text and the names of
    variables that were unset with no default."""
    missing: list[str] = []

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            missing.append(name)
        return ""

    return _VAR.sub(substitute, text), missing


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_document(text: str, environ: Mapping[str, str] | None = None) -> Document:
    env = os.environ if environ is None else environ
    doc = Document(data=None, positions={}, errors=[])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem]))
        doc.errors.append((where, f"YAML syntax error: {message}", "check indentation, quotes and ':' spacing"))
        return doc
    except yaml.YAMLError as exc:
        doc.errors.append((Position(1, 1), f"YAML error: {exc}", ""))
        return doc
    except RecursionError:
        doc.errors.append((Position(1, 1), "the document nests too deeply", "flatten it"))
        return doc
    if node is None:
        doc.data = {}
        return doc
    try:
        doc.data = _convert(node, (), doc, env, frozenset())
    except _TooBig as exc:
        doc.data = None
        doc.errors.append((exc.where, str(exc), "expand the aliases by hand, or simplify the file"))
    except RecursionError:
        doc.data = None
        doc.errors.append((Position(1, 1), "the document nests too deeply", "flatten it"))
    return doc


class _TooBig(Exception):
    def __init__(self, where: Position, message: str) -> None:
        super().__init__(message)
        self.where = where


def _convert(node: yaml.Node, path: Path, doc: Document, env: Mapping[str, str], active: frozenset) -> Any:
    doc.nodes_seen += 1
    if doc.nodes_seen > MAX_NODES:
        raise _TooBig(_mark(node), f"the document expands to more than {MAX_NODES} values (YAML aliases?)")
    if id(node) in active:
        raise _TooBig(_mark(node), "a YAML alias refers to itself (a recursive structure)")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        active = active | {id(node)}
    doc.positions.setdefault(path, _mark(node))
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                doc.errors.append((_mark(key_node), "YAML merge keys ('<<') are not supported", "write the keys out"))
                continue
            key = _scalar(key_node, doc, env) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int, float, bool)) or key is None:
                doc.errors.append((_mark(key_node), "a mapping key must be a plain scalar", ""))
                continue
            key = str(key)
            if key in result:
                first = doc.positions.get(path + (key,))
                seen = f" (first at line {first.line})" if first else ""
                doc.errors.append((_mark(key_node), f"duplicate key {key!r}{seen}", "remove one of them"))
                continue
            doc.positions[path + (key,)] = _mark(key_node)
            result[key] = _convert(value_node, path + (key,), doc, env, active)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.positions[path + (index,)] = _mark(item)
            items.append(_convert(item, path + (index,), doc, env, active))
        return items
    return _scalar(node, doc, env)


def _scalar(node: yaml.ScalarNode, doc: Document, env: Mapping[str, str]) -> Any:
    try:
        value = doc.loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        doc.errors.append((_mark(node), f"invalid YAML value: {problem}", "remove the tag or fix the value"))
        return None
    if not isinstance(value, str) or "$" not in value:
        return value
    expanded, missing = expand_variables(value, env)
    for name in missing:
        doc.errors.append(
            (_mark(node), f"environment variable {name!r} is not set and has no default", f"use ${{{name}:-default}}")
        )
    if node.style is None and expanded != value:
        # A plain scalar keeps YAML's typing after expansion: ${PRIO:-10} is the integer 10.
        tag = doc.loader.resolve(yaml.ScalarNode, expanded, (True, False))
        if tag != "tag:yaml.org,2002:str":
            try:
                return yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
    return expanded
