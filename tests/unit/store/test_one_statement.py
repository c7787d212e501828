"""The one-statement batch is derived from upsert_calls and advance_window_state (issue 10): the
derivation finds what it rewrites, and refuses a text whose shape changed."""

from __future__ import annotations

import re

import pytest

from cdrsync.model import CALL_COLUMNS
from cdrsync.store.queries import (
    ADVANCE_WINDOW_SQL,
    FIRST_COLUMN_PARAM,
    TEMP_TABLE,
    UPSERT_ADVANCE_SQL,
    UPSERT_CALLS_SQL,
    one_statement_sql,
)


def test_the_merge_rules_are_the_upserts_own_text() -> None:
    """The upsert from its SELECT list to RETURNING is upsert_calls' text, unchanged."""
    start, end = UPSERT_CALLS_SQL.index("    ORDER BY"), UPSERT_CALLS_SQL.index("    RETURNING")
    rules = UPSERT_CALLS_SQL[start:end]
    assert len(rules) > 2000
    assert rules in UPSERT_ADVANCE_SQL
    assert UPSERT_CALLS_SQL.split(f"FROM {TEMP_TABLE}")[0].split("WITH up AS (")[1] in (
        UPSERT_ADVANCE_SQL
    )


def test_the_rows_come_from_one_array_per_column_and_every_parameter_is_used() -> None:
    """The temporary table is replaced by unnest of one array per column; $1..$N all appear."""
    assert f"FROM {TEMP_TABLE}\n" not in UPSERT_ADVANCE_SQL
    assert f"AS {TEMP_TABLE} ({', '.join(CALL_COLUMNS)})" in UPSERT_ADVANCE_SQL
    used = {int(n) for n in re.findall(r"\$(\d+)", UPSERT_ADVANCE_SQL)}
    assert used == set(range(1, FIRST_COLUMN_PARAM + len(CALL_COLUMNS)))
    assert "rows_inserted = rows_inserted + (SELECT inserted FROM counted)" in UPSERT_ADVANCE_SQL


def _advance_without_state(text: str) -> str:
    return text.replace("WITH advanced AS", "WITH moved AS")


@pytest.mark.parametrize(
    ("upsert", "advance", "missing"),
    [
        (UPSERT_CALLS_SQL.replace("WITH up AS", "WITH ins AS"), ADVANCE_WINDOW_SQL, "WITH up"),
        (UPSERT_CALLS_SQL.replace(f"FROM {TEMP_TABLE}", "FROM staged"), ADVANCE_WINDOW_SQL,
         f"'FROM {TEMP_TABLE}' not found once"),
        (UPSERT_CALLS_SQL.replace("FROM up", "FROM elsewhere"), ADVANCE_WINDOW_SQL, "WITH up"),
        (UPSERT_CALLS_SQL, _advance_without_state(ADVANCE_WINDOW_SQL), "WITH advanced"),
        (UPSERT_CALLS_SQL, ADVANCE_WINDOW_SQL.replace("$10::bigint[]", "$11::bigint[]"),
         "parameters"),
        (UPSERT_CALLS_SQL, ADVANCE_WINDOW_SQL.replace("$2::bigint", "0::bigint"), "parameters"),
    ],
)  # fmt: skip
def test_a_changed_text_is_refused_not_rewritten_wrong(
    upsert: str, advance: str, missing: str
) -> None:
    """An edit that moves what the derivation rewrites fails at import, naming what is gone."""
    with pytest.raises(ValueError, match=re.escape(missing)):
        one_statement_sql(upsert, advance)
