"""Decision tables: what their cells mean, and the checks a table gets before it compiles.

A table (an item of a rule file's `rules:` with `table:` instead of `name:`) holds input
columns (a matched fact's fields), output columns (an action to propose or a fact to
derive) and rows. `app.rules.table_checks` turns each row into an ordinary `Rule`,
so every check on rules applies; this module gives each cell its meaning twice, as the
`Test`s the engine decides and as a set of values, and with the sets finds what a reader
of the table cannot see at a glance:

- under hit policy `unique`, two rows that one input matches (an error, naming both);
- rows no input can reach: an empty range, or under `first` a row whose every input an
  earlier row already takes (a warning);
- inputs no row covers, when every input column is bounded: enumerated (`values:`) or
  numeric (a warning, with example inputs).

Cells: `-` (any value, or none), a value (equality), a list of values (any of them), a
comparison with a number (`< 5`, `>= 1000`, `== 3`) or a range of numbers (`[1000..5000)`:
`[`/`]` include the bound, `(`/`)` exclude it). A column is numeric when it declares
`min`/`max` or its cells are numbers, comparisons and ranges; enumerated when it declares
`values`; otherwise its cells are values compared for equality.

The analysis is exact (sets of intervals and of values, never sampling) and bounded: a
table too large or too fragmented to check within `MAX_ANALYSIS_BOXES` is refused, and
nothing about it reaches the rule engine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.rules.compiler import INT64_MAX, INT64_MIN

HIT_POLICIES = ("unique", "first", "collect")
MAX_TABLE_ROWS = 200
MAX_INPUT_COLUMNS = 8
MAX_OUTPUT_COLUMNS = 8
MAX_COLUMN_VALUES = 64
MAX_CELL_TEXT = 100
MAX_ANALYSIS_BOXES = 20_000  # intervals and values the pieces of input space may hold at once
# and the pairs of intervals (or values) the checks may compare or cut: each set operation
# is charged what it really costs, |intervals| x |intervals|, before it runs (about 1 s)
MAX_ANALYSIS_WORK = 100_000
MAX_REPORTED = 10  # overlaps named per table (then "and N more")
MAX_EXAMPLES = 3  # example inputs per gap warning

ANY = "-"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?"
_COMPARISON = re.compile(rf"^(<=|>=|<|>|==|=)\s*({_NUMBER})$")
_RANGE = re.compile(rf"^([\[(\]])\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*([\])\[])$")
_PLAIN_NUMBER = re.compile(rf"^{_NUMBER}$")


class CellError(ValueError):
    """A cell, column or table that cannot be read or checked; the message says why."""


class TooComplex(CellError):
    pass


# --- sets of values ----------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    lo: float
    lo_closed: bool
    hi: float
    hi_closed: bool

    @property
    def empty(self) -> bool:
        return self.lo > self.hi or (self.lo == self.hi and not (self.lo_closed and self.hi_closed))

    def __and__(self, other: Interval) -> Interval:
        if self.lo > other.lo or (self.lo == other.lo and not self.lo_closed):
            lo, lo_closed = self.lo, self.lo_closed
        else:
            lo, lo_closed = other.lo, other.lo_closed
        if self.hi < other.hi or (self.hi == other.hi and not self.hi_closed):
            hi, hi_closed = self.hi, self.hi_closed
        else:
            hi, hi_closed = other.hi, other.hi_closed
        return Interval(lo, lo_closed, hi, hi_closed)

    def __sub__(self, other: Interval) -> list[Interval]:
        parts = [self & Interval(-math.inf, False, other.lo, not other.lo_closed),
                 self & Interval(other.hi, not other.hi_closed, math.inf, False)]
        return [part for part in parts if not part.empty]

    def point(self) -> float:
        """A number inside (the interval is not empty)."""
        if self.lo_closed and math.isfinite(self.lo):
            return self.lo
        if self.hi_closed and math.isfinite(self.hi):
            return self.hi
        if math.isfinite(self.lo) and math.isfinite(self.hi):
            return self.lo / 2 + self.hi / 2
        if math.isfinite(self.lo):
            return self.lo + 1
        if math.isfinite(self.hi):
            return self.hi - 1
        return 0

    def __str__(self) -> str:
        if self.lo == self.hi:
            return _number_text(self.lo)
        if not math.isfinite(self.lo) and not math.isfinite(self.hi):
            return "any number"
        if not math.isfinite(self.lo):
            return f"{'<=' if self.hi_closed else '<'} {_number_text(self.hi)}"
        if not math.isfinite(self.hi):
            return f"{'>=' if self.lo_closed else '>'} {_number_text(self.lo)}"
        return (f"{'[' if self.lo_closed else '('}{_number_text(self.lo)}.."
                f"{_number_text(self.hi)}{']' if self.hi_closed else ')'}")


ALL_NUMBERS = Interval(-math.inf, False, math.inf, False)


def _apart(a: Interval, b: Interval) -> bool:
    """Whether two intervals surely share no number (a quick test; the costly cut is
    needed only when it says no)."""
    return a.hi < b.lo or b.hi < a.lo


def _number_text(number: float) -> str:
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    return repr(number)


@dataclass(frozen=True)
class Numbers:
    """A set of a numeric column's values: numbers in `intervals`, and with `other` what is
    no number (text, a boolean, a missing field), which only `-` matches."""

    intervals: tuple[Interval, ...]
    other: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "intervals", tuple(i for i in self.intervals if not i.empty))

    @property
    def empty(self) -> bool:
        return not self.intervals and not self.other

    def __and__(self, other: Numbers) -> Numbers:
        return Numbers(tuple(part for a in self.intervals for b in other.intervals
                             if not _apart(a, b) and not (part := a & b).empty),
                       self.other and other.other)

    def __sub__(self, other: Numbers) -> Numbers:
        left = list(self.intervals)
        for b in other.intervals:
            left = [part for a in left for part in ((a,) if _apart(a, b) else a - b)]
        return Numbers(tuple(left), self.other and not other.other)

    def example(self, column: str) -> str:
        if self.intervals:
            return f"{column} = {_number_text(self.intervals[0].point())}"
        return f"{column} not a number (or missing)"


def _key(value: Any) -> tuple[str, Any]:
    """A value as JSON compares it: 1 is 1.0, true is not 1."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    return ("s", value)


@dataclass(frozen=True)
class Values:
    """A set of a column's values: exactly `keys`, or (`complement`) anything but them."""

    keys: frozenset[tuple[str, Any]]
    complement: bool = False

    @property
    def empty(self) -> bool:
        return not self.complement and not self.keys

    def __and__(self, other: Values) -> Values:
        if self.complement and other.complement:
            return Values(self.keys | other.keys, True)
        if self.complement:
            return Values(other.keys - self.keys)
        if other.complement:
            return Values(self.keys - other.keys)
        return Values(self.keys & other.keys)

    def __sub__(self, other: Values) -> Values:
        if self.complement and other.complement:
            return Values(other.keys - self.keys)
        if self.complement:
            return Values(self.keys | other.keys, True)
        if other.complement:
            return Values(self.keys & other.keys)
        return Values(self.keys - other.keys)

    def example(self, column: str) -> str:
        if self.complement:
            if not self.keys:
                return f"{column} = any value"
            shown = ", ".join(_value_text(k) for k in sorted(self.keys, key=repr)[:5])
            return f"{column} = a value other than {shown}"
        return f"{column} = {_value_text(min(self.keys, key=repr))}"


def _value_text(key: tuple[str, Any]) -> str:
    kind, value = key
    if kind == "b":
        return "true" if value else "false"
    if kind == "n":
        return _number_text(value)
    return repr(value)


ColumnSet = Numbers | Values
Box = tuple[ColumnSet, ...]


# --- columns and cells -------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """An input column: the field `alias.field` of a fact the table's `when` matches."""

    name: str
    alias: str
    field: str
    kind: str  # "number", "enum" or "value"
    values: tuple[Any, ...] = ()  # an enumerated column's values
    bounds: Interval = ALL_NUMBERS  # a numeric column's values, for gaps

    @property
    def bounded(self) -> bool:
        return self.kind in ("number", "enum")

    def universe(self) -> ColumnSet:
        """What the column holds, as far as gaps are looked for."""
        if self.kind == "number":
            return Numbers((self.bounds,))
        if self.kind == "enum":
            return Values(frozenset(_key(v) for v in self.values))
        return Values(frozenset(), True)

    def anything(self) -> ColumnSet:
        """What `-` matches."""
        if self.kind == "number":
            return Numbers((ALL_NUMBERS,), True)
        return Values(frozenset(), True)


@dataclass(frozen=True)
class Cell:
    """One input cell: the tests the engine decides (op, value), and its set of values."""

    text: str
    tests: tuple[tuple[str, Any], ...]
    values: ColumnSet


def number(text: str) -> int | float:
    """A number as a cell writes it: finite, and an integer within 64 bits."""
    value: int | float
    if re.fullmatch(r"[-+]?\d+", text):
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX:
            raise CellError(f"{text} does not fit in 64 bits")
        return value
    value = float(text)
    if not math.isfinite(value):
        raise CellError(f"{text} is not a finite number")
    return value


def is_numeric_cell(raw: Any) -> bool:
    """Whether a cell reads as a number, a comparison with one or a range of them."""
    if isinstance(raw, bool):
        return False
    if isinstance(raw, int | float):
        return True
    if isinstance(raw, list):
        return bool(raw) and all(is_numeric_cell(item) and not isinstance(item, str)
                                 for item in raw)
    if isinstance(raw, str) and len(raw) <= MAX_CELL_TEXT:
        text = raw.strip()
        return bool(_COMPARISON.fullmatch(text) or _RANGE.fullmatch(text))
    return False


def scalar(raw: Any) -> Any:
    """A value a cell or an enumeration holds: text, a boolean or a number (checked)."""
    if isinstance(raw, bool | str):
        if isinstance(raw, str) and len(raw) > MAX_CELL_TEXT:
            raise CellError(f"a text of at most {MAX_CELL_TEXT} characters")
        return raw
    if isinstance(raw, int):
        return number(str(raw))
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise CellError(f"{raw} is not a finite number")
        return raw
    raise CellError(f"a cell is '-', a value, a list of values, a comparison (>= 1000) or a "
                    f"range ([1000..5000)), not {type(raw).__name__}")


def parse_cell(raw: Any, column: Column, max_in: int) -> Cell:
    """The meaning of one input cell of `column` (CellError: why it has none)."""
    if raw is None or raw == ANY:
        return Cell(ANY, (), column.anything())
    if isinstance(raw, list):
        if not raw or len(raw) > max_in:
            raise CellError(f"a list of 1 to {max_in} values")
        values = tuple(dict.fromkeys(scalar(item) for item in raw))
        cell = Cell(str(list(raw)), (("in", values),), _points(values, column))
        _check_members(values, column)
        return cell
    if column.kind == "number" and isinstance(raw, str):
        return _numeric_cell(raw.strip(), column)
    value = scalar(raw)
    if column.kind == "number" and isinstance(value, str | bool):
        raise CellError(f"column {column.name} holds numbers: write a number, a comparison "
                        "(>= 1000) or a range ([1000..5000))")
    _check_members((value,), column)
    return Cell(str(raw), (("==", value),), _points((value,), column))


def _check_members(values: Sequence[Any], column: Column) -> None:
    if column.kind != "enum":
        return
    allowed = {_key(v) for v in column.values}
    for value in values:
        if _key(value) not in allowed:
            raise CellError(f"{value!r} is not one of column {column.name}'s values "
                            f"({', '.join(repr(v) for v in column.values)})")


def _points(values: Sequence[Any], column: Column) -> ColumnSet:
    if column.kind == "number":
        if any(isinstance(v, str | bool) for v in values):
            raise CellError(f"column {column.name} holds numbers, not {values!r}")
        return Numbers(tuple(Interval(v, True, v, True) for v in values))
    return Values(frozenset(_key(v) for v in values))


_OPS = {"<": (-math.inf, False, None, False), "<=": (-math.inf, False, None, True),
        ">": (None, False, math.inf, False), ">=": (None, True, math.inf, False)}


def _numeric_cell(text: str, column: Column) -> Cell:
    if len(text) > MAX_CELL_TEXT:
        raise CellError(f"a cell of at most {MAX_CELL_TEXT} characters")
    if _PLAIN_NUMBER.fullmatch(text):
        text = f"== {text}"
    comparison = _COMPARISON.fullmatch(text)
    if comparison:
        op, value = comparison.group(1), number(comparison.group(2))
        if op in ("=", "=="):
            return Cell(text, (("==", value),), Numbers((Interval(value, True, value, True),)))
        lo, lo_closed, hi, hi_closed = _OPS[op]
        interval = Interval(value if lo is None else lo, lo_closed,
                            value if hi is None else hi, hi_closed)
        return Cell(text, ((op, value),), Numbers((interval,)))
    bounded = _RANGE.fullmatch(text)
    if bounded is None:
        raise CellError(f"{text!r} is not a cell of numeric column {column.name}: write '-', "
                        "a number, a comparison (>= 1000) or a range ([1000..5000), (0..1])")
    opening, low, high, closing = bounded.groups()
    lo, hi = number(low), number(high)
    lo_closed, hi_closed = opening == "[", closing == "]"
    tests = ((">=" if lo_closed else ">", lo), ("<=" if hi_closed else "<", hi))
    return Cell(text, tests, Numbers((Interval(lo, lo_closed, hi, hi_closed),)))


# --- the checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What the checks found about a table: `rows` (1-based) it is about, and whether it is
    an error (the table is refused) or a warning."""

    message: str
    rows: tuple[int, ...]
    error: bool = False


class _Budget:
    """What the checks of one table may take: a table's rows cut its input space into
    pieces, and a hostile (or unlucky) table into more than any check could go through."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.used = 0

    def _refuse(self, what: str) -> TooComplex:
        return TooComplex(
            f"table {self.table} is too fragmented to check for overlaps and gaps ({what}): "
            "split it into smaller tables, or use fewer, wider ranges")

    def spend(self, work: int) -> None:
        self.used += work
        if self.used > MAX_ANALYSIS_WORK:
            raise self._refuse(f"more than {MAX_ANALYSIS_WORK:,} steps to check")

    def hold(self, size: int) -> None:
        """`size`: the intervals and values of every piece held, not the pieces: one piece
        of a column of listed numbers can hold thousands of intervals."""
        if size > MAX_ANALYSIS_BOXES:
            raise self._refuse(f"more than {MAX_ANALYSIS_BOXES:,} intervals and values in "
                               "its pieces of input space")


def _size(part: ColumnSet) -> int:
    """What a set holds: its intervals or values (at least 1)."""
    if isinstance(part, Numbers):
        return max(1, len(part.intervals) + part.other)
    return max(1, len(part.keys))


def _cost(x: ColumnSet, y: ColumnSet, cut: bool = False) -> int:
    """What `x & y` (or, `cut`, `x - y`) costs: every interval of x against every one of y
    (a cut leaves up to |x| + |y| intervals, each cut by the rest of y); sets of values
    hash, the smaller into the larger (a cut: x's into y)."""
    if isinstance(x, Numbers) and isinstance(y, Numbers):
        return _size(y) * ((_size(x) + _size(y)) if cut else _size(x))
    return _size(x) if cut else min(_size(x), _size(y))


def _box_size(box: Box) -> int:
    return sum(_size(part) for part in box)


def _intersect(a: Box, b: Box, budget: _Budget) -> Box | None:
    parts = []
    for x, y in zip(a, b, strict=True):
        budget.spend(_cost(x, y))
        part = x & y  # type: ignore[operator]
        if part.empty:
            return None
        parts.append(part)
    return tuple(parts)


def _subtract(region: list[Box], box: Box, budget: _Budget) -> list[Box]:
    """The boxes of `region` less `box`, as disjoint boxes."""
    left: list[Box] = []
    held = 0
    for piece in region:
        common = _intersect(piece, box, budget)
        if common is None:
            left.append(piece)
            held += _box_size(piece)
            budget.hold(held)
            continue
        inside = list(piece)
        for i, (x, y) in enumerate(zip(piece, box, strict=True)):
            budget.spend(_cost(x, y, cut=True))
            rest = x - y  # type: ignore[operator]
            if not rest.empty:
                left.append(cut := (*inside[:i], rest, *piece[i + 1:]))
                held += _box_size(cut)
                budget.hold(held)
            inside[i] = common[i]
    return left


def _example(box: Box, columns: Sequence[Column]) -> str:
    return ", ".join(part.example(column.name) for part, column in zip(box, columns, strict=True))


def check_table(name: str, hit_policy: str, columns: Sequence[Column],
                rows: Sequence[Sequence[Cell]], lines: Sequence[int | None]) -> list[Finding]:
    """Overlaps (an error under `unique`), unreachable rows and gaps (warnings); TooComplex
    when the checks would take more than their budget."""
    boxes: list[Box] = [tuple(cell.values for cell in row) for row in rows]
    empty = {n for n, box in enumerate(boxes, start=1) if any(part.empty for part in box)}
    checks = _TableChecks(name, columns, lines, boxes, empty, _Budget(name))
    findings = checks.empty_rows()
    if hit_policy == "unique":
        findings += checks.overlaps()
    if hit_policy == "first":
        findings += checks.unreachable()
    if columns and all(column.bounded for column in columns):
        findings += checks.gaps()
    return findings


@dataclass
class _TableChecks:
    """The checks of one table, on its rows' boxes; they share one budget. A row that can
    never match (`empty`, by number) overlaps, hides and covers nothing."""

    name: str
    columns: Sequence[Column]
    lines: Sequence[int | None]
    boxes: list[Box]
    empty: set[int]
    budget: _Budget

    def row_text(self, number: int) -> str:
        line = self.lines[number - 1] if number - 1 < len(self.lines) else None
        return f"row {number}" + (f" (line {line})" if line else "")

    def empty_rows(self) -> list[Finding]:
        return [Finding(f"table {self.name}: {self.row_text(n)} can never match: a cell of it "
                        "matches no value (an empty range)", (n,)) for n in sorted(self.empty)]

    def overlaps(self) -> list[Finding]:
        """Pairs of rows some input matches both of: under `unique`, errors."""
        boxes, empty = self.boxes, self.empty
        overlaps = []
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                common = None if i + 1 in empty or j + 1 in empty else _intersect(
                    boxes[i], boxes[j], self.budget)
                if common is not None:
                    overlaps.append((i + 1, j + 1, common))
        findings = [Finding(
            f"table {self.name}: {self.row_text(i)} and {self.row_text(j)} overlap, and the hit "
            f"policy is unique: both match {_example(common, self.columns) or 'every input'} "
            "(make them exclusive, or use hit_policy: first or collect)", (i, j), error=True)
            for i, j, common in overlaps[:MAX_REPORTED]]
        if len(overlaps) > MAX_REPORTED:
            findings.append(Finding(f"table {self.name}: and {len(overlaps) - MAX_REPORTED} more "
                                    "overlapping pairs of rows", (), error=True))
        return findings

    def unreachable(self) -> list[Finding]:
        """Rows that, under `first`, the rows above them leave no input to match."""
        boxes, empty = self.boxes, self.empty
        findings = []
        for k in range(1, len(boxes)):
            if k + 1 in empty:
                continue
            region = [boxes[k]]
            for j in range(k):
                if j + 1 not in empty:
                    region = _subtract(region, boxes[j], self.budget)
                if not region:
                    break
            if not region:
                earlier = [n for n in range(1, k + 1) if n not in empty
                           and _intersect(boxes[n - 1], boxes[k], self.budget) is not None]
                findings.append(Finding(
                    f"table {self.name}: {self.row_text(k + 1)} is never reached: under hit "
                    f"policy first, row(s) {', '.join(map(str, earlier))} match every input it "
                    "does", (k + 1,)))
        return findings

    def gaps(self) -> list[Finding]:
        """The inputs no row matches, when every column is bounded (so the inputs are
        known)."""
        gaps: list[Box] = [tuple(column.universe() for column in self.columns)]
        for n, box in enumerate(self.boxes, start=1):
            if n not in self.empty:
                gaps = _subtract(gaps, box, self.budget)
            if not gaps:
                return []
        examples = "; ".join(_example(gap, self.columns) for gap in gaps[:MAX_EXAMPLES])
        return [Finding(
            f"table {self.name}: no row covers some inputs, e.g. {examples}"
            + (f" (and {len(gaps) - MAX_EXAMPLES} more such regions)"
               if len(gaps) > MAX_EXAMPLES else ""), ())]
