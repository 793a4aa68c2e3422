"""Decision tables checked as rules are: a `TableChecker` turns each row of a table into an
ordinary `Rule` (through `Checker.rule`), so every check on rules applies to it.

What a cell means, and what a table's rows leave open or overlap, is `app.rules.tables`; this
module checks a table's shape (name, hit policy, inputs, outputs, rows), records what
`tables.check_table` finds at the line of the row it is about, and builds the rows' rules.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from app.rules import tables
from app.rules.checks import ALIAS, MAX_FIELD_TESTS, MAX_IN_VALUES, RULE_NAME, Checker
from app.rules.model import Pattern, Rule, Test
from app.shared.errors import RuleProblem


class TableChecker(Checker):
    """A `Checker` that also checks decision tables, each row one rule."""

    def table(self, raw: dict[str, Any], index: int, line: int | None, row_lines: list[int],
              seen: set[str]) -> list[Rule]:
        """The rules of a decision table's rows (those with an output), or none when it has
        a problem: every one is recorded, with the table's or the row's line."""
        self.at_rule, self.at_line = None, line
        before = len(self.problems)
        name = self.name(raw.get("table"), "table", RULE_NAME, "the table name")
        self.at_rule = f"table {name}" if name else None
        if name is not None and f"table {name}" in seen:
            self.problem("table", "another table has this name")
        seen.add(f"table {name}")  # (no rule name holds a space)
        self.keys(raw, "", ("table", "description", "hit_policy", "priority", "when", "unless",
                            "inputs", "outputs", "rows"), ("table", "when", "inputs", "rows"))
        hit_policy = raw.get("hit_policy", "unique")
        if hit_policy not in tables.HIT_POLICIES:
            self.problem("hit_policy", f"one of {', '.join(tables.HIT_POLICIES)} (got "
                         f"{hit_policy!r})")
        self.description(raw)  # (each row's rule gets it)
        when = raw.get("when")
        aliases = tuple(when) if isinstance(when, dict) else ()
        columns = self.columns(raw.get("inputs"), aliases)
        outputs = self.outputs(raw.get("outputs", {}), columns)
        rows = raw.get("rows")
        if not isinstance(rows, list) or not rows or len(rows) > tables.MAX_TABLE_ROWS:
            self.problem("rows", f"a list of 1 to {tables.MAX_TABLE_ROWS} rows (got "
                         f"{len(rows) if isinstance(rows, list) else type(rows).__name__})")
            return []
        if len(self.problems) > before or name is None:
            return []
        columns = _numeric_columns(columns, rows)
        cells = self.table_cells(rows, columns, outputs, row_lines, line)
        if len(self.problems) > before:
            return []
        self.findings(name, hit_policy, columns, cells, row_lines, line)
        if len(self.problems) > before:
            return []
        return self.row_rules(raw, name, hit_policy, columns, cells, rows, index, row_lines,
                              seen)

    def outputs(self, outputs: Any, columns: list[tables.Column]) -> dict[str, Any]:
        """A table's output columns, by name (none after a problem with their shape)."""
        if (not isinstance(outputs, dict) or not outputs
                or len(outputs) > tables.MAX_OUTPUT_COLUMNS
                or not all(isinstance(k, str) and ALIAS.fullmatch(k) for k in outputs)):
            self.problem("outputs", f"a mapping of 1 to {tables.MAX_OUTPUT_COLUMNS} output "
                         "columns (names like aliases), each {propose: {...}} or {assert: {...}}")
            return {}
        for column in outputs:
            if column in (c.name for c in columns) or column == "rule":
                self.problem(f"outputs.{column}", "names an input column too (or 'rule')")
        return outputs

    def table_cells(self, rows: list[Any], columns: list[tables.Column], outputs: dict[str, Any],
                    row_lines: list[int], line: int | None) -> list[list[tables.Cell]]:
        """Every row's input cells, each row's problems at its line."""
        cells = []
        for number, row in enumerate(rows, start=1):
            self.at_line = _row_line(row_lines, number, line)
            cells.append(self.row_cells(row, f"rows.{number}", columns, outputs))
        return cells

    def findings(self, name: str, hit_policy: str, columns: list[tables.Column],
                 cells: list[list[tables.Cell]], row_lines: list[int], line: int | None) -> None:
        """What `tables.check_table` finds: its errors as problems, its warnings as warnings,
        each at the line of the first row it is about (or the table's)."""
        self.at_rule, self.at_line = None, line  # each finding names its table
        try:
            findings = tables.check_table(name, hit_policy, columns, cells, row_lines)
        except tables.CellError as exc:
            self.problem("", str(exc))
            return
        for finding in findings:
            at = _row_line(row_lines, finding.rows[0], line) if finding.rows else line
            if finding.error:
                self.at_line = at
                self.problem("", finding.message)
            else:
                self.warnings.append(RuleProblem(self.file, finding.message, None, at))

    def columns(self, raw: Any, aliases: tuple[str, ...]) -> list[tables.Column]:
        """The input columns: `name: alias.field`, or `name: {field: alias.field, values:
        [...]}` (enumerated) or `{field: ..., min: n, max: n}` (numeric, bounded)."""
        if not isinstance(raw, dict) or not raw or len(raw) > tables.MAX_INPUT_COLUMNS:
            self.problem("inputs", f"a mapping of 1 to {tables.MAX_INPUT_COLUMNS} input columns,"
                         " each name: alias.field")
            return []
        columns = []
        for name, spec in raw.items():
            where = f"inputs.{name}"
            if not isinstance(name, str) or not ALIAS.fullmatch(name) or name == "rule":
                self.problem(where, "a column name is like an alias (a letter, then letters, "
                             "digits or '_'), not 'rule'")
                continue
            spec = {"field": spec} if isinstance(spec, str) else spec
            if not isinstance(spec, dict):
                self.problem(where, "alias.field, or {field: alias.field, values: [...]} or "
                             "{field: alias.field, min: n, max: n}")
                continue
            self.keys(spec, where, ("field", "values", "min", "max"), ("field",))
            path = spec.get("field")
            alias, _, field_name = path.partition(".") if isinstance(path, str) else ("", "", "")
            if alias not in aliases:
                self.problem(f"{where}.field", f"{path!r} must be alias.field with an alias of "
                             f"the table's when ({', '.join(aliases) or 'none'})")
                continue
            if not self.field_name(field_name, f"{where}.field"):
                continue
            column = self.column(name, alias, field_name, spec, where)
            if column is not None:
                columns.append(column)
        return columns

    def column(self, name: str, alias: str, field_name: str, spec: dict[str, Any],
               where: str) -> tables.Column | None:
        values = spec.get("values")
        if values is not None:
            if ("min" in spec or "max" in spec or not isinstance(values, list) or not values
                    or len(values) > tables.MAX_COLUMN_VALUES):
                self.problem(f"{where}.values", f"a list of 1 to {tables.MAX_COLUMN_VALUES} "
                             "values (and no min or max)")
                return None
            try:
                scalars = tuple(dict.fromkeys(tables.scalar(v) for v in values))
            except tables.CellError as exc:
                self.problem(f"{where}.values", str(exc))
                return None
            return tables.Column(name, alias, field_name, "enum", values=scalars)
        if "min" in spec or "max" in spec:
            bounds = []
            for key, default in (("min", -math.inf), ("max", math.inf)):
                bound = spec.get(key, default)
                if isinstance(bound, bool) or not isinstance(bound, int | float) or (
                        key in spec and not math.isfinite(bound)):
                    self.problem(f"{where}.{key}", "must be a finite number")
                    return None
                bounds.append(bound)
            if bounds[0] > bounds[1]:
                self.problem(where, "min is more than max")
                return None
            return tables.Column(name, alias, field_name, "number", bounds=tables.Interval(
                bounds[0], math.isfinite(bounds[0]), bounds[1], math.isfinite(bounds[1])))
        return tables.Column(name, alias, field_name, "value")

    def row_cells(self, row: Any, where: str, columns: list[tables.Column],
                  outputs: dict[str, Any]) -> list[tables.Cell]:
        """One row's input cells (a column none declares is numeric when a cell of it is a
        comparison or a range)."""
        if not isinstance(row, dict):
            self.problem(where, "a row is a mapping of column name to cell")
            return []
        self.keys(row, where, (*(c.name for c in columns), *outputs, "rule"))
        cells = []
        for column in columns:
            raw = row.get(column.name, tables.ANY)
            try:
                cells.append(tables.parse_cell(raw, column, MAX_IN_VALUES))
            except tables.CellError as exc:
                self.problem(f"{where}.{column.name}", str(exc))
                cells.append(tables.Cell(tables.ANY, (), column.anything()))
        return cells

    def row_rules(self, raw: dict[str, Any], name: str, hit_policy: str,
                  columns: list[tables.Column], cells: list[list[tables.Cell]],
                  rows: list[dict[str, Any]], index: int, row_lines: list[int],
                  seen: set[str]) -> list[Rule]:
        """Each row with an output as a rule: the table's `when` (and `unless`) with the
        row's cells as tests, and its outputs as `then`, through `rule` like any other."""
        compiled: list[Rule] = []
        earlier: list[tuple[Pattern, ...]] = []
        for number, (row, row_cells) in enumerate(zip(rows, cells, strict=True), start=1):
            line = _row_line(row_lines, number, None)
            self.at_line = line
            guard = self.cell_patterns(columns, row_cells)
            then = self.row_outputs(row, raw.get("outputs", {}), f"rows.{number}")
            if then is None or not then:
                if hit_policy == "first":
                    earlier.append(guard)
                continue
            rule_name = row.get("rule", f"{name}_row{number}")
            body = {"name": rule_name, "priority": raw.get("priority", 0),
                    "when": raw["when"], "then": then,
                    **({"unless": raw["unless"]} if "unless" in raw else {}),
                    **({"description": raw["description"]} if "description" in raw else {})}
            rule = self.rule(body, index + len(compiled), line, seen)
            if rule is None:
                continue
            by_alias = {p.alias: p for p in guard}
            when = []
            for pattern in rule.when:
                extra = by_alias[pattern.alias].tests if pattern.alias in by_alias else ()
                if len(pattern.tests) + len(extra) > MAX_FIELD_TESTS:
                    self.problem(f"when.{pattern.alias}", f"with the row's cells, more than "
                                 f"{MAX_FIELD_TESTS} tests on one alias")
                when.append(Pattern(pattern.alias, (*pattern.tests, *extra)))
            compiled.append(dataclasses.replace(
                rule, when=tuple(when), table=name, row=number,
                excludes=tuple(earlier) if hit_policy == "first" else ()))
            if hit_policy == "first":
                earlier.append(guard)
        self.at_rule, self.at_line = None, None
        return compiled

    def cell_patterns(self, columns: list[tables.Column],
                      cells: list[tables.Cell]) -> tuple[Pattern, ...]:
        """A row's cells as tests, grouped by the alias whose field each column reads."""
        tests: dict[str, list[Test]] = {}
        for column, cell in zip(columns, cells, strict=True):
            for op, value in cell.tests:
                tests.setdefault(column.alias, []).append(Test(column.field, op, value))
        return tuple(Pattern(alias, tuple(found)) for alias, found in tests.items())

    def row_outputs(self, row: dict[str, Any], outputs: dict[str, Any],
                    where: str) -> list[dict[str, Any]] | None:
        """The row's steps: each output column it takes (true, or a mapping of params or
        data to add) as written under outputs. None after a problem."""
        steps = []
        for column, spec in outputs.items():
            cell = row.get(column, tables.ANY)
            if cell in (tables.ANY, None, False):
                continue
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in (
                    "propose", "assert") or not isinstance(next(iter(spec.values())), dict):
                self.problem(f"outputs.{column}", "each output column is {propose: {...}} or "
                             "{assert: {...}}")
                return None
            [(kind, body)] = spec.items()
            if cell is True:
                steps.append(spec)
                continue
            if not isinstance(cell, dict):
                self.problem(f"{where}.{column}", "an output cell is '-' (not taken), true, or "
                             "a mapping of params (propose) or data (assert) to add")
                return None
            key = "params" if kind == "propose" else "data"
            base = body.get(key, {})
            if not isinstance(base, dict):
                self.problem(f"outputs.{column}.{kind}.{key}", "needs a mapping")
                return None
            steps.append({kind: {**body, key: {**base, **cell}}})
        return steps




def _row_line(row_lines: list[int], number: int, default: int | None) -> int | None:
    """The line of a table's row `number` (1-based), or `default` where the file gives none
    (JSON has no line map)."""
    return row_lines[number - 1] if number - 1 < len(row_lines) else default


def _numeric_columns(columns: list[tables.Column], rows: list[Any]) -> list[tables.Column]:
    """The columns, each one declared with neither values nor bounds made numeric when a
    cell of it is text that reads as a comparison with a number or a range (`> 5`, `[1..10)`)."""
    return [dataclasses.replace(c, kind="number") if c.kind == "value" and any(
        isinstance(row, dict) and isinstance(row.get(c.name), str)
        and tables.is_numeric_cell(row[c.name]) for row in rows) else c for c in columns]

