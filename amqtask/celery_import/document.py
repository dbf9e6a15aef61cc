"""Write routing.yaml by hand, with comments (PyYAML drops them), remembering which
line belongs to which translated item so that an item `amqtask check` refuses can be
taken out and reported instead of breaking the whole file."""
from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
_WIDTH = 100


@dataclass(frozen=True)
class Line:
    text: str
    key: tuple | None = None  # the translated item this line belongs to (None: structure)


def scalar(value: Any) -> str:
    """A YAML scalar that reads back as `value`; `$` is doubled because the loader
    expands ${VAR} in every string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("$", "$$")
    if _PLAIN.match(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a JSON string is a valid double-quoted YAML scalar


def flow(value: Any) -> str:
    """A value on one line: scalars, [lists] and {mappings}."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{scalar(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return "[" + ", ".join(flow(v) for v in items) + "]"
    return scalar(value)


def comment(text: str, indent: int = 0) -> list[str]:
    """`text` as wrapped `#` lines; newlines in it never escape the comment."""
    prefix = " " * indent + "# "
    lines = []
    for paragraph in str(text).splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, _WIDTH - len(prefix), break_long_words=False,
                                   break_on_hyphens=False) or [""])
    return [(prefix + line).rstrip() for line in lines]


class Builder:
    """Lines of a YAML document; each added line may name the item it belongs to."""

    def __init__(self) -> None:
        self.lines: list[Line] = []

    def add(self, text: str, key: tuple | None = None) -> None:
        self.lines.append(Line(text, key))

    def note(self, text: str, indent: int = 0, key: tuple | None = None) -> None:
        for line in comment(text, indent):
            self.add(line, key)

    def blank(self) -> None:
        if self.lines and self.lines[-1].text:
            self.add("")

    def text(self) -> str:
        return "\n".join(line.text for line in self.lines).rstrip("\n") + "\n"

    def key_at(self, line_number: int) -> tuple | None:
        """The item of a 1-based line number (a problem's position)."""
        if 1 <= line_number <= len(self.lines):
            return self.lines[line_number - 1].key
        return None
