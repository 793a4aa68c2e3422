"""Reading YAML and JSON that someone else wrote (rule files, policy data, candidates): what
the service accepts of those formats, in one place.

YAML is read with a safe loader that also refuses anchors and aliases (no expansion
bombs), duplicate keys (the last one would silently win) and YAML's implicit dates (a
date stays the string it looks like). JSON refuses NaN and Infinity and duplicate keys.
Nesting deeper than the parsers' recursion allows is an error of the document, not of
the service: callers catch RecursionError beside the format's own errors.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


class DocumentLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys or implicit timestamps."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases (*name) are not allowed here",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(None, None, f"duplicate key {key!r}",
                                           key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


DocumentLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """One YAML document; yaml.YAMLError (marked where it can be) or RecursionError."""
    loader = DocumentLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
