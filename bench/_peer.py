"""The benchmark's peer: dlt, a general-purpose loader, loading the same Acefone records.

Run as a child process by ``bench/backfill.py`` (so its CPU and RSS are its own): dlt's
``rest_api`` source reads ``GET /v1/call/records`` of the simulator (page-number pagination
until an empty page, bearer token, ``results`` as the data), and merges into PostgreSQL on the
primary key ``id``, in its own database of the benchmark's server. Needs the optional ``bench``
extra (``pip install -e '.[bench]'``); cdrsync itself does not depend on dlt.

    python bench/_peer.py --base-url URL --dsn DSN --since 'YYYY-MM-DD HH:MM:SS'
        --until 'YYYY-MM-DD HH:MM:SS' --work DIR

Prints ``loaded <rows>`` (rows in the destination table) when it is done.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

# No traffic beyond 127.0.0.1: dlt's anonymous usage telemetry is off before dlt is imported.
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

import dlt
from dlt.sources.rest_api import rest_api_source

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway credential (see _child.py)


def _credentials(dsn: str) -> str:
    """dlt's credentials for a unix-socket URI such as ``postgresql://u@/db?host=/dir&port=N``:
    dlt insists on a host and a password, so the socket goes in the query, which libpq prefers
    to the URI's host, and the password is a placeholder (the server trusts its socket)."""
    parts = urlsplit(dsn)
    return f"postgresql://{parts.username}:unused@localhost{parts.path}?{parts.query}"


def main() -> int:
    """Load the range with dlt; print how many rows the destination holds."""
    parser = argparse.ArgumentParser(description="the benchmark's dlt peer")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--since", required=True, help="local 'YYYY-MM-DD HH:MM:SS'")
    parser.add_argument("--until", required=True, help="local 'YYYY-MM-DD HH:MM:SS'")
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args()
    source = rest_api_source(
        {
            "client": {
                "base_url": args.base_url,
                "auth": {"type": "bearer", "token": TOKEN},
                "paginator": {
                    "type": "page_number",
                    "page_param": "page",
                    "base_page": 1,
                    "total_path": None,  # stop at the first empty page
                },
            },
            "resources": [
                {
                    "name": "calls",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "v1/call/records",
                        "params": {"from_date": args.since, "to_date": args.until, "limit": 100},
                        "data_selector": "results",
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_peer",
        pipelines_dir=str(args.work / "dlt"),
        destination=dlt.destinations.postgres(credentials=_credentials(args.dsn)),
        dataset_name="peer",
    )
    pipeline.run(source)
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM calls")
    print(f"loaded {rows[0][0] if rows else 0}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
