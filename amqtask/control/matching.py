"""Which control messages a node acts on, decided exactly as kombu's
`Node.handle_message` decides (kombu/pidbox.py, kombu/matcher.py):

- a non-empty `destination` list: only the nodes it names;
- otherwise a `pattern` with a `matcher`: `glob` (fnmatch on the node name) or
  `pcre` (a regular expression matched at the start of the node name);
- otherwise (no destination, and no pattern or no matcher): every node.

Two deliberate differences, both on input no kombu client sends: a destination
that is a string rather than a list means that one node (kombu would test for a
substring), and an unknown matcher or an invalid regular expression matches
nothing (kombu raises, and the command is dropped with a logged error).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any

MATCHERS = ("glob", "pcre")
# A pattern is matched against a node name of at most a few hundred characters;
# a longer one is garbage, and refusing it bounds the regular-expression work.
_PATTERN_MAX = 1000


def addressed_to(hostname: str, destination: Any = None, pattern: Any = None, matcher: Any = None) -> bool:
    """True when a control message with these fields is meant for node `hostname`."""
    if destination:
        if isinstance(destination, str):
            return destination == hostname
        if isinstance(destination, (list, tuple)):
            return hostname in destination
        return False
    if pattern and matcher:
        return matches(hostname, pattern, matcher)
    return True


def matches(hostname: str, pattern: Any, matcher: Any) -> bool:
    """kombu's `match(hostname, pattern, matcher)`: glob or pcre; anything else is False."""
    if not isinstance(pattern, str) or len(pattern) > _PATTERN_MAX:
        return False
    if matcher == "glob":
        # fnmatch.fnmatch lowercases on Windows only; fnmatchcase is its POSIX behaviour everywhere.
        return fnmatch.fnmatchcase(hostname, pattern)
    if matcher == "pcre":
        try:
            return re.match(pattern, hostname) is not None
        except re.error:
            return False
    return False
