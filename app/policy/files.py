"""A policy directory as OPA would load it: Rego modules, their tests, and data documents.

Data follows OPA's bundle layout, so the embedded engine and an OPA sidecar started
on the same directory see the same document: `a/b/data.json` (or `data.yaml`) is
mounted at `data.a.b`. The revision is a content hash of every module and data
file that decisions depend on (tests excluded).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.shared.documents import load_json, load_yaml
from app.shared.errors import PolicyInvalid, PolicyProblem

DATA_FILES = ("data.json", "data.yaml", "data.yml")
TEST_SUFFIX = "_test.rego"
MAX_POLICY_FILE_BYTES = 1_000_000
# OPA reports compile errors as "<file>:<line>: <message>".
_OPA_LOCATION = re.compile(r"(?P<file>[^\s:]+\.rego):(?P<line>\d+):\s*(?P<message>.*)")


@dataclass(frozen=True)
class PolicySet:
    modules: Mapping[str, str]  # relative path -> Rego source
    tests: Mapping[str, str]
    data: tuple[tuple[str, Any], ...]  # dotted mount path ("" for the root) -> document
    revision: str
    sources: Mapping[str, str]  # the files decisions depend on, as text (for the archive)

    @classmethod
    def from_sources(cls, sources: Mapping[str, str]) -> PolicySet:
        """Policies given as text (candidate policies for a replay): {"x.rego": source}."""
        modules, tests, data, problems, kept = {}, {}, [], [], {}
        for name, source in sorted(sources.items()):
            if not name.endswith(TEST_SUFFIX):
                kept[name] = source
            if name.endswith(TEST_SUFFIX):
                tests[name] = source
            elif name.endswith(".rego"):
                modules[name] = source
            elif Path(name).name in DATA_FILES:
                try:
                    data.append((_mount_path(Path(name).parent), _parse_data(name, source)))
                except PolicyInvalid as exc:
                    problems.extend(exc.problems)
            else:
                problems.append(PolicyProblem(name, "only .rego and data.json/.yaml files"))
        if problems:
            raise PolicyInvalid(problems)
        return cls(modules, tests, tuple(data), _revision(modules, data), kept)


def _mount_path(relative_dir: Path) -> str:
    return ".".join(part for part in relative_dir.parts if part not in (".", ""))


def _parse_data(name: str, text: str) -> Any:
    try:
        if name.endswith(".json"):
            return load_json(text)
        return load_yaml(text)
    except json.JSONDecodeError as exc:
        raise PolicyInvalid([PolicyProblem(name, f"not valid JSON: {exc.msg}",
                                           exc.lineno)]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise PolicyInvalid([PolicyProblem(name, f"not valid YAML: {exc.problem}",
                                           mark.line + 1 if mark else None)]) from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise PolicyInvalid([PolicyProblem(name, f"not valid data: {exc}")]) from exc
    except RecursionError as exc:
        raise PolicyInvalid([PolicyProblem(name, "nested too deeply")]) from exc


def _revision(modules: Mapping[str, str], data: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(f"module {name}\n{modules[name]}\n".encode())
    for mount, document in sorted(data, key=lambda item: item[0]):
        digest.update(f"data {mount}\n{json.dumps(document, sort_keys=True)}\n".encode())
    return digest.hexdigest()[:16]


def policy_files(directory: Path) -> Iterator[Path]:
    """Every file of a policy directory that OPA would load, in a stable order."""
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (path.suffix == ".rego" or path.name in DATA_FILES) and not any(
                part.startswith(".") for part in path.relative_to(directory).parts):
            yield path


def load_policy_set(directory: Path) -> PolicySet:
    """Read a policy directory; PolicyInvalid (file, line) for data that does not parse."""
    sources: dict[str, str] = {}
    problems: list[PolicyProblem] = []
    for path in policy_files(directory):
        name = str(path.relative_to(directory))
        try:
            if path.stat().st_size > MAX_POLICY_FILE_BYTES:
                problems.append(PolicyProblem(name, f"larger than {MAX_POLICY_FILE_BYTES} bytes"))
                continue
            sources[name] = path.read_text(encoding="utf-8")
        except OSError as exc:  # its reason, not its absolute path
            problems.append(PolicyProblem(name, f"cannot be read: {exc.strerror or exc}"))
        except UnicodeDecodeError as exc:
            problems.append(PolicyProblem(name, f"cannot be read: {exc}"))
    if problems:
        raise PolicyInvalid(problems)
    return PolicySet.from_sources(sources)


def file_kind(name: str) -> str:
    """"module", "test" or "data": what a file of a policy set is."""
    if name.endswith(TEST_SUFFIX):
        return "test"
    return "module" if name.endswith(".rego") else "data"


def disk_revision(directory: Path) -> str:
    """The revision of the policy directory as it is on disk now, comparable with a loaded
    set's: its content hash when the files can be read and parsed (whether or not the
    modules compile), else "unreadable-" and a hash of the raw bytes of every file."""
    try:
        return load_policy_set(directory).revision
    except PolicyInvalid:
        digest = hashlib.sha256()
        for path in policy_files(directory):
            try:
                with path.open("rb") as file:
                    content = file.read(MAX_POLICY_FILE_BYTES + 1)
            except OSError:
                content = b"\0unreadable"
            digest.update(f"{path.relative_to(directory)}\n".encode() + content + b"\n")
        return "unreadable-" + digest.hexdigest()[:16]


def problems_from_opa(message: str, default_file: str) -> list[PolicyProblem]:
    """OPA's error text, one PolicyProblem per located error."""
    problems = [PolicyProblem(m.group("file"), m.group("message").strip(), int(m.group("line")))
                for m in _OPA_LOCATION.finditer(message)]
    return problems or [PolicyProblem(default_file, message.strip())]
