"""The `matches` operator's regular expressions: one dialect, checked, and run in RE2.

Supported: literals, `.`, `[...]`, `[^...]`, `*`, `+`, `?`, `{m}`, `{m,n}` (n <= 100),
`|`, `( )`, `\\d`, `\\s`, and `\\` before any punctuation. `^` and `$` are allowed only
at the ends, where they change nothing: a pattern always matches the whole value.

Only the service checks a match (`Test.holds`): durable_rules' own regex engine misses
matches (`[]a]`, `.` against a tab), so the core is told only that the field is there.
RE2's matching time is linear in the text: a pattern such as `(a+)+b` that makes a
backtracking engine take minutes on thirty "a"s takes microseconds.
"""

from __future__ import annotations

import re
from typing import Any

import re2

MAX_PATTERN_LENGTH = 200
MAX_REPEAT = 100

_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_CLASSES = frozenset("ds")


def _options() -> Any:
    options = re2.Options()
    options.dot_nl = True  # `.` is any character, a newline too
    return options


_RE2_OPTIONS = _options()


def _strip_anchors(pattern: str) -> str:
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return pattern


def compile_pattern(pattern: str) -> Any:
    """The RE2 pattern for `fullmatch`, or ValueError saying why the dialect refuses it."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("needs a non-empty regular expression")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_LENGTH} characters")
    body = _strip_anchors(pattern)
    if not body:
        raise ValueError("regular expression matches only the empty string")
    _check_dialect(body)
    try:
        return re2.compile(body, _RE2_OPTIONS)
    except re2.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc


def _check_dialect(body: str) -> None:
    """ValueError for the first thing in `body` the dialect does not support."""
    in_class = False
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            _check_escape(body, i)
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if body[i + 1:i + 2] == "^":
                i += 1
        elif char in "^$":
            raise ValueError(f"'{char}' is allowed only at the ends: matches uses the whole value")
        elif char == "(" and body[i + 1:i + 2] == "?":
            raise ValueError("groups with (? are not supported")
        elif char == "{":
            i = _repeat_end(body, i)
            continue
        i += 1


def _check_escape(body: str, i: int) -> None:
    """The backslash at `i` escapes punctuation or is \\d or \\s."""
    if i + 1 == len(body):
        raise ValueError("regular expression ends with a lone backslash")
    escaped = body[i + 1]
    if (escaped.isalnum() and escaped not in _CLASSES) or escaped in " _":
        raise ValueError(f"\\{escaped} is not supported (use \\d, \\s or a [...] class)")


def _repeat_end(body: str, i: int) -> int:
    """Where the repeat `{m}` or `{m,n}` starting at `i` ends, checked."""
    repeat = _REPEAT.match(body, i)
    if repeat is None:
        raise ValueError("'{' must start a repeat {m} or {m,n}; write \\{ for a literal")
    if repeat.group(2) == "":
        raise ValueError("open-ended repeats {m,} are not supported; use {m,n}")
    if any(int(b) > MAX_REPEAT for b in repeat.groups() if b):
        raise ValueError(f"repeat counts above {MAX_REPEAT} are not supported")
    return repeat.end()
