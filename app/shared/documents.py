"""Reading YAML and JSON that someone else wrote (rule files, policy data, candidates): what
the service accepts of those formats, in one place.

YAML is read with LibYAML's safe loader, refusing also anchors and aliases (no expansion
bombs), duplicate keys (the last one would silently win), YAML's implicit dates (a date
stays the string it looks like) and anything JSON cannot hold. JSON refuses NaN and
Infinity and duplicate keys.
Nesting deeper than the parsers' recursion allows is an error of the document, not of
the service: callers catch RecursionError beside the format's own errors.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


class DocumentLoader(yaml.CSafeLoader):
    """LibYAML's safe loader (a pure-Python parser reads about 50 KB a second: a 1 MB
    document held a worker for 20 s), without implicit timestamps; `compose_yaml` checks
    what LibYAML does not: aliases and duplicate keys."""


DocumentLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def compose_yaml(text: str) -> yaml.Node | None:
    """One YAML document's node tree (marks on every node); yaml.YAMLError, marked where it
    can be, for an alias (an anchor used again: no expansion bombs) or a duplicate key (the
    last one would silently win)."""
    for event in yaml.parse(text, Loader=DocumentLoader):  # LibYAML's events: fast
        if isinstance(event, yaml.AliasEvent):
            raise yaml.MarkedYAMLError(None, None, "anchors and aliases (*name) are not "
                                       "allowed here", event.start_mark)  # type: ignore[arg-type]
    loader = DocumentLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    pending = [node] if node is not None else []
    while pending:
        current = pending.pop()
        if isinstance(current, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in current.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise yaml.MarkedYAMLError(None, None, "keys must be text",
                                               key.start_mark)
                if key.value in keys:
                    raise yaml.MarkedYAMLError(None, None, f"duplicate key {key.value!r}",
                                               key.start_mark)
                keys.add(key.value)
                pending += [key, value]
        elif isinstance(current, yaml.SequenceNode):
            pending += current.value
    return node


def construct_yaml(node: yaml.Node | None) -> Any:
    """The data of a checked node tree; ValueError for what JSON cannot hold (a date, a
    set, bytes, a key that is not text, NaN)."""
    if node is None:
        return None
    data = DocumentLoader("").construct_document(node)
    json_problem(data)
    return data


def load_yaml(text: str) -> Any:
    """One YAML document as JSON-like data: yaml.YAMLError or ValueError if it is not."""
    return construct_yaml(compose_yaml(text))


def json_problem(data: Any) -> None:
    """ValueError unless `data` is what JSON holds: objects with text keys, arrays, text,
    finite numbers, booleans and null."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise ValueError("object keys must be text")
            pending += value.values()
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("numbers must be finite")
        elif value is not None and not isinstance(value, str | int | bool):
            raise ValueError(f"{type(value).__name__} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(text: str) -> Any:
    """One JSON document; json.JSONDecodeError (with its line), ValueError (a duplicate
    key, NaN) or RecursionError."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
