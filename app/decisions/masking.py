"""Masking sensitive fact fields in decision records (as OPA masks its decision logs).

`DECISION_MASK_FIELDS` names data fields, either everywhere (`iban`) or for one fact type
(`vendor_profile.iban`). Their values are replaced in the decision record as stored and
returned (the snapshot, the derived facts, and the action parameters of the same name,
in the actions and in the verdict facts: a parameter has no type, so `type.name` masks
every parameter called `name`) and
listed under `masked`; the fact pool and the outbox keep the real values, because the
rules and the executors need them. A replay of a masked decision runs on the masked
values, and its result says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "**masked**"


class Masking:
    def __init__(self, fields: Iterable[str]) -> None:
        self.everywhere: set[str] = set()
        self.by_type: dict[str, set[str]] = {}
        for field in fields:
            fact_type, _, name = field.rpartition(".")
            if fact_type:
                self.by_type.setdefault(fact_type, set()).add(name)
            else:
                self.everywhere.add(name)

    def __bool__(self) -> bool:
        return bool(self.everywhere or self.by_type)

    def _names(self, fact_type: str | None) -> set[str]:
        return self.everywhere | self.by_type.get(fact_type or "", set())

    def _masked(self, values: dict[str, Any], names: set[str], where: str,
                paths: list[str]) -> dict[str, Any]:
        hidden = names & values.keys()
        if not hidden:
            return values
        paths.extend(f"{where}.{name}" for name in sorted(hidden))
        return {key: MASK if key in hidden else value for key, value in values.items()}

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with the masked fields replaced, and their paths under `masked`."""
        if not self:
            return record
        paths: list[str] = []
        facts = [{**f, "data": self._masked(f["data"], self._names(f["type"]),
                                            f"facts.{f['id']}", paths)}
                 for f in record["facts"]]
        derived = [{**f, "data": self._masked(f["data"], self._names(f["type"]),
                                              f"derived_facts.{f['id']}", paths)}
                   for f in record["derived_facts"]]
        anywhere = self.everywhere.union(*self.by_type.values())  # params have no type
        actions = [{**a, "params": self._masked(a["params"], anywhere,
                                                f"actions.{a['id']}.params", paths)}
                   for a in record["actions"]]
        verdicts = [{**f, "data": {**self._masked(f["data"], anywhere,
                                                  f"verdict_facts.{f['id']}", paths),
                                   **({"params": self._masked(
                                       f["data"]["params"], anywhere,
                                       f"verdict_facts.{f['id']}.params", paths)}
                                      if "params" in f["data"] else {})}}
                    for f in record.get("verdict_facts", [])]
        if not paths:
            return record
        return {**record, "facts": facts, "derived_facts": derived, "actions": actions,
                **({"verdict_facts": verdicts} if "verdict_facts" in record else {}),
                "masked": paths}
