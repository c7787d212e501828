"""Just enough PromQL for the tests of deploy/: the series selectors an expression contains,
and which scraped samples each one selects.

Not a PromQL parser: functions, aggregations, operators and ranges are skipped; what is left are
the selectors (``name{label op "value", ...}``), and those are what decide which series an alert
or a panel is about. Grouping clauses (``by (stream)``), ranges (``[5m]``) and ``offset`` are
recognised so that their words are not taken for metric names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?![A-Za-z0-9_]))
  | (?P<number>\d+(?:\.\d*)?(?:e[+-]?\d+)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[=<>{}(),+\-*/%^])
    """,
    re.VERBOSE,
)
_CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher: ``label op value`` (regular expressions are anchored, as in PromQL)."""

    label: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a series with ``labels`` passes (a missing label is the empty string)."""
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True, slots=True)
class Selector:
    """A series selector: a metric name and its label matchers."""

    metric: str
    matchers: tuple[Matcher, ...] = ()

    def selects(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the sample ``name{labels}`` is one of the selected series."""
        return name == self.metric and all(m.matches(labels) for m in self.matchers)

    def select(
        self, samples: Iterable[tuple[str, Mapping[str, str]]]
    ) -> list[tuple[str, Mapping[str, str]]]:
        """The samples this selector picks, in their order."""
        return [(name, labels) for name, labels in samples if self.selects(name, labels)]


def _tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
    return found


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def _matchers(tokens: list[tuple[str, str]], i: int) -> tuple[list[Matcher], int]:
    """The matchers between the ``{`` at ``i`` and its ``}``; the index after the ``}``."""
    found: list[Matcher] = []
    i += 1
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        (_, label), (_, op), (kind, value) = tokens[i : i + 3]
        if kind != "string" or op not in {"=", "!=", "=~", "!~"}:
            raise ValueError(f"not a label matcher: {label} {op} {value}")
        found.append(Matcher(label, op, _unquote(value)))
        i += 3
    return found, i + 1


def _skip_group(tokens: list[tuple[str, str]], i: int) -> int:
    """The index after the parenthesised list that starts at ``i`` (if one does)."""
    if i < len(tokens) and tokens[i][1] == "(":
        while tokens[i][1] != ")":
            i += 1
        i += 1
    return i


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr``, in order."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and text in _CLAUSES:
            i = _skip_group(tokens, i + 1)
        elif kind == "name" and text.lower() in _KEYWORDS:
            i += 1
        elif kind == "name" and (following == "(" or following in _CLAUSES):
            i += 1  # a function, or an aggregation (``sum by (x) (...)``)
        elif kind == "name" and following == "{":
            matchers, i = _matchers(tokens, i + 1)
            found.append(Selector(text, tuple(matchers)))
        elif kind == "name":
            found.append(Selector(text))
            i += 1
        elif text == "{":
            matchers, i = _matchers(tokens, i)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            rest = tuple(m for m in matchers if m.label != "__name__")
            found.append(Selector(names[0] if names else "", rest))
        else:
            i += 1
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {s.metric for s in selectors(expr)}
