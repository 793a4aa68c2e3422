"""The `matches` operator's regular expressions: one dialect, checked and translated.

durable_rules has its own regex engine: always anchored, `%` as the escape
character, a handful of classes. Rule authors write the familiar dialect below;
`translate` turns it into durable_rules' and refuses anything the two engines would
not read the same way, so the C core and `Test.holds` always agree.

Supported: literals, `.`, `[...]`, `[^...]`, `*`, `+`, `?`, `{m}`, `{m,n}` (n <= 100),
`|`, `( )`, `\\d`, `\\s`, and `\\` before any punctuation. `^` and `$` are allowed only
at the ends, where they change nothing: a pattern always matches the whole value.

The service's own check of a match (`Test.holds`, and every `unless`, which only it
decides) uses RE2, whose matching time is linear in the text: a pattern such as `(a+)+b`
that makes a backtracking engine take minutes on thirty "a"s takes microseconds.
"""

from __future__ import annotations

import re
from typing import Any

import re2

MAX_PATTERN_LENGTH = 200
MAX_REPEAT = 100

# Characters durable_rules treats as syntax: a literal one needs its `%` escape.
_DURABLE_SPECIAL = set(".|?*+()[]{}%")
_CLASSES = {"d": "%d", "s": "%s"}
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def _strip_anchors(pattern: str) -> str:
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return pattern


def _options() -> Any:
    options = re2.Options()
    options.dot_nl = True  # `.` is any character, a newline too (the durable_rules reading)
    return options


_RE2_OPTIONS = _options()


def translate(pattern: str) -> tuple[str, Any]:
    """(durable_rules pattern, RE2 pattern for fullmatch), or ValueError saying why not."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("needs a non-empty regular expression")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_LENGTH} characters")
    body = _strip_anchors(pattern)
    if not body:
        raise ValueError("regular expression matches only the empty string")
    try:
        compiled = re2.compile(body, _RE2_OPTIONS)
    except re2.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 == len(body):
                raise ValueError("regular expression ends with a lone backslash")
            out.append(_escape(body[i + 1]))
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append("%%" if char == "%" else char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append(char)
            if body[i + 1:i + 2] == "^":
                out.append("^")
                i += 1
            i += 1
            continue
        if char in "^$":
            raise ValueError(f"'{char}' is allowed only at the ends: matches uses the whole value")
        if char == "(" and body[i + 1:i + 2] == "?":
            raise ValueError("groups with (? are not supported")
        if char == "{":
            repeat = _REPEAT.match(body, i)
            if repeat is None:
                raise ValueError("'{' must start a repeat {m} or {m,n}; write \\{ for a literal")
            if repeat.group(2) == "":
                raise ValueError("open-ended repeats {m,} are not supported; use {m,n}")
            if any(int(b) > MAX_REPEAT for b in repeat.groups() if b):
                raise ValueError(f"repeat counts above {MAX_REPEAT} are not supported")
            out.append(repeat.group(0))
            i = repeat.end()
            continue
        out.append("%%" if char == "%" else char)
        i += 1
    return "".join(out), compiled


def _escape(char: str) -> str:
    if char in _CLASSES:
        return _CLASSES[char]
    if char.isalnum() or char in " _":
        raise ValueError(f"\\{char} is not supported (use \\d, \\s or a [...] class)")
    return ("%" + char) if char in _DURABLE_SPECIAL else char
