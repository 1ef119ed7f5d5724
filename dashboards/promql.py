"""Just enough PromQL reading to check dashboards and rules against the metric contract.

Grafana query text is turned into plain PromQL (its interval macros replaced by sample values) so
``promtool check rules`` can parse it, and the series selectors are extracted so every metric
name and label a query uses can be checked against :mod:`dashboards.metrics`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GRAFANA_MACROS", "Selector", "label_values_query", "selectors", "to_promql"]

#: Grafana's interval macros and the sample values substituted for them.
GRAFANA_MACROS: dict[str, str] = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_TOKEN = re.compile(
    r"\s*(?:(?P<duration>[0-9]+(?:ms|s|m|h|d|w|y))(?![A-Za-z0-9_])"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<number>[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]]|\"\"))"
)
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
_LABEL_VALUES = re.compile(
    r"^label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)$"
)


@dataclass(frozen=True)
class Selector:
    """A series selector in a query: the metric name and the label names it matches on."""

    metric: str
    labels: tuple[str, ...]


def to_promql(expr: str) -> str:
    """Replace Grafana's interval macros with sample durations so the text is plain PromQL.

    Template variables inside string literals (``run=~"$run"``) stay: they are valid PromQL.

    Raises:
        TypeError: ``expr`` is not a string.
        ValueError: a ``$`` variable remains outside a string literal.
    """
    if not isinstance(expr, str):
        raise TypeError(f"expr must be a str, got {type(expr).__name__}")
    # Longest macro first: $__interval is a prefix of $__interval_ms-like names.
    for macro in sorted(GRAFANA_MACROS, key=len, reverse=True):
        expr = expr.replace(macro, GRAFANA_MACROS[macro])
    if "$" in _STRING.sub('""', expr):
        raise ValueError(f"expr uses a Grafana variable outside a string literal: {expr!r}")
    return expr


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression, in order of appearance.

    Raises:
        TypeError: ``expr`` is not a string.
        ValueError: a token is not PromQL, or a selector has no metric name.
    """
    if not isinstance(expr, str):
        raise TypeError(f"expr must be a str, got {type(expr).__name__}")
    text = _RANGE.sub("[]", _STRING.sub('""', to_promql(expr)))
    tokens = _tokenize(text, expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if value == "{":
            raise ValueError(f"selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        if value in _LABEL_LIST_KEYWORDS and following == "(":
            i = tokens.index(("op", ")"), i) + 1
            continue
        if following == "(" or value in _AGGREGATIONS or value in _KEYWORDS:
            i += 1
            continue
        labels: list[str] = []
        i += 1
        if following == "{":
            close = tokens.index(("op", "}"), i)
            labels = [v for k, v in tokens[i + 1 : close] if k == "ident"]
            i = close + 1
        found.append(Selector(value, tuple(labels)))
    return found


def _tokenize(text: str, original: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read PromQL at {text[pos:]!r} in {original!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def label_values_query(query: str) -> tuple[str, str]:
    """Split a Grafana ``label_values(selector, label)`` variable query.

    Returns:
        The selector (a PromQL expression) and the label name.

    Raises:
        ValueError: ``query`` is not a ``label_values`` query.
    """
    match = _LABEL_VALUES.match(query.strip())
    if match is None:
        raise ValueError(f"query must be label_values(selector, label), got {query!r}")
    return match.group("selector"), match.group("label")
