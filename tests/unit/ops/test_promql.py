"""The PromQL selector reader the deploy/ tests rely on (tests/promql.py): what it extracts and
which series each selector picks, so that a wrong alert expression cannot pass by accident."""

from __future__ import annotations

import pytest

from promql import Matcher, Selector, metric_names, selectors


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("cdrsync_rows_total", [Selector("cdrsync_rows_total")]),
        (
            'rate(cdrsync_pushes_total{status!~"2..", account="a"}[5m])',
            [
                Selector(
                    "cdrsync_pushes_total",
                    (Matcher("status", "!~", "2.."), Matcher("account", "=", "a")),
                )
            ],
        ),
        (
            "max by (job, instance, stream) (cdrsync_watermark_lag_seconds) > 7200",
            [Selector("cdrsync_watermark_lag_seconds")],
        ),
        (
            "time() - cdrsync_last_success_timestamp_seconds offset 5m > 1800",
            [Selector("cdrsync_last_success_timestamp_seconds")],
        ),
        (
            'sum without (status) (a_total) / ignoring (limit) b{x="1"} or absent(c)',
            [Selector("a_total"), Selector("b", (Matcher("x", "=", "1"),)), Selector("c")],
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))",
            [Selector("x_bucket")],
        ),
        (
            '{__name__="up", job="cdrsync"} == bool 0',
            [Selector("up", (Matcher("job", "=", "cdrsync"),))],
        ),
    ],
)
def test_selectors_are_read_from_an_expression(expr: str, expected: list[Selector]) -> None:
    """Functions, grouping clauses, ranges, offsets and keywords are not taken for metrics."""
    assert selectors(expr) == expected


SERIES = [
    ("cdrsync_pushes_total", {"account": "a", "status": "200"}),
    ("cdrsync_pushes_total", {"account": "a", "status": "401"}),
    ("cdrsync_pushes_total", {"account": "b", "status": "503"}),
    ("cdrsync_watermark_lag_seconds", {"stream": "a/list"}),
    ("cdrsync_watermark_lag_seconds", {"stream": "a/history"}),
]


@pytest.mark.parametrize(
    ("expr", "picked"),
    [
        ('cdrsync_pushes_total{status!~"2.."}', [1, 2]),
        ('cdrsync_pushes_total{status=~"2.."}', [0]),
        ('cdrsync_pushes_total{status=~"20"}', []),  # anchored: "20" is not "200"
        ('cdrsync_pushes_total{account="b"}', [2]),
        ('cdrsync_pushes_total{account!="b", status="401"}', [1]),
        ('cdrsync_watermark_lag_seconds{stream!~".+/history"}', [3]),
        ('cdrsync_watermark_lag_seconds{missing=""}', [3, 4]),  # absent label equals ""
        ("cdrsync_rows_total", []),
    ],
)
def test_a_selector_picks_the_series_promql_would(expr: str, picked: list[int]) -> None:
    """Equality, inequality and anchored regular expressions, as Prometheus evaluates them."""
    (selector,) = selectors(expr)
    assert selector.select(SERIES) == [SERIES[i] for i in picked]


def test_metric_names_of_a_compound_expression() -> None:
    """Both sides of a binary operation are read."""
    expr = "cdrsync_rate_budget_used / cdrsync_rate_budget_limit"
    assert metric_names(expr) == {"cdrsync_rate_budget_used", "cdrsync_rate_budget_limit"}


def test_unreadable_text_is_an_error() -> None:
    """Text the reader does not understand fails loudly rather than being skipped."""
    with pytest.raises(ValueError, match="cannot read PromQL"):
        selectors("cdrsync_rows_total # comment")
