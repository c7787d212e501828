"""The benchmark's schema check: the documented queries on the loaded table, and the indexes.

Runs every SQL block of ``docs/queries.md`` with ``EXPLAIN (ANALYZE, FORMAT JSON)`` on the
database ``cdrsync backfill`` filled, and reports each one's execution time and the indexes its
plan reads. An index on ``calls`` earns its place when a documented query uses it, or when it
enforces the key the upsert's ``ON CONFLICT`` needs (the primary key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

DOCS = Path(__file__).resolve().parent.parent / "docs" / "queries.md"
INDEXES_SQL = """
SELECT c.relname AS index, i.indisprimary AS primary_key
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND t.relname = 'calls'
ORDER BY c.relname
"""


@dataclass(frozen=True, slots=True)
class QueryRun:
    """One documented query's plan on the loaded table."""

    title: str
    ms: float
    indexes: frozenset[str]


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """Every documented query's run, and the indexes of ``calls``."""

    queries: list[QueryRun]
    indexes: dict[str, bool]  # name -> is the primary key

    def users(self, index: str) -> list[str]:
        """The documented queries whose plans read ``index``."""
        return [q.title for q in self.queries if index in q.indexes]

    def idle(self) -> list[str]:
        """Indexes no documented query reads, the primary key (the upsert's) and the indexes of
        cdrsync's own queries aside."""
        return [
            name
            for name, pk in self.indexes.items()
            if not pk and name not in OWN_INDEXES and not self.users(name)
        ]


OWN_INDEXES = {
    "calls_list_started_at_idx": "the window streams' stored-hash lookup (query list_hashes)",
}
"""Indexes on calls that cdrsync's own queries read, with the query."""


def documented_queries(text: str) -> list[tuple[str, str]]:
    """(heading, SQL) of every ```sql block under a '### ' heading of the queries document."""
    found: list[tuple[str, str]] = []
    title = ""
    for line_block in re.split(r"^(### .*)$", text, flags=re.MULTILINE):
        if line_block.startswith("### "):
            title = line_block[4:].strip()
            continue
        if not title:
            continue
        blocks = re.findall(r"```sql\n(.*?)```", line_block, flags=re.DOTALL)
        for n, sql in enumerate(blocks):
            found.append((title if len(blocks) == 1 else f"{title} ({n + 1})", sql.strip()))
    return found


def _indexes_in(plan: Any) -> set[str]:
    if isinstance(plan, dict):
        found = {plan["Index Name"]} if "Index Name" in plan else set()
        for value in plan.values():
            found |= _indexes_in(value)
        return found
    if isinstance(plan, list):
        return set().union(*(_indexes_in(item) for item in plan)) if plan else set()
    return set()


async def check(dsn: str, schema: str) -> SchemaReport:
    """Run every documented query under EXPLAIN ANALYZE (after ANALYZE of the table)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ANALYZE {schema}.calls")
        runs = []
        for title, sql in documented_queries(DOCS.read_text("utf-8")):
            body = sql.rstrip(";")
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {body}")
            plan = orjson.loads(raw)[0]
            runs.append(
                QueryRun(title, float(plan["Execution Time"]), frozenset(_indexes_in(plan)))
            )
        rows = await conn.fetch(INDEXES_SQL, schema)
        return SchemaReport(runs, {r["index"]: bool(r["primary_key"]) for r in rows})
    finally:
        await conn.close()


def show(report: SchemaReport) -> None:
    """Print each query's time and indexes, then which query each index serves."""
    print("      documented queries (docs/queries.md), EXPLAIN ANALYZE:")
    for q in report.queries:
        used = ", ".join(sorted(q.indexes)) or "no index"
        print(f"        {q.ms:8.1f} ms  {q.title[:60]:<60} [{used}]")
    print("      indexes on calls:")
    for name, primary in report.indexes.items():
        users = report.users(name)
        why = "; ".join(users) if users else "no documented query"
        if primary:
            why = f"the upsert's ON CONFLICT key; {why}"
        elif name in OWN_INDEXES:
            why = f"{OWN_INDEXES[name]}; {why}"
        print(f"        {name}: {why}")
