"""The Prometheus metrics as a scrape shows them (no I/O)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cdrsync.ops.metrics import Metrics


def queue_samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cdrsync_queue_rows"
    }


def test_a_queue_state_that_empties_drops_to_nothing():
    """Rows in doubt resolved: the next scrape no longer shows the old count (an alert on
    them clears)."""
    metrics = Metrics()
    metrics.set_queues({("vcclive", "eu", "outbox"): {"unknown": 3, "delivered": 5}})
    assert queue_samples(metrics) == {"unknown": 3.0, "delivered": 5.0}
    metrics.set_queues({("vcclive", "eu", "outbox"): {"delivered": 8}})
    assert queue_samples(metrics) == {"delivered": 8.0}


def test_reject_records_follow_the_table_and_drop_when_deleted() -> None:
    """The distinct-reject gauge shows each account's count read at the scrape, and an account
    whose rejects were cleaned up disappears (an alert on new rejects does not see stale ones)."""
    metrics = Metrics()
    metrics.set_rejects({("acefone", "in"): 3, ("vcclive", "eu"): 1})
    metrics.set_rejects({("acefone", "in"): 4})
    text = metrics.render().decode()
    found = {
        (s.labels["vendor"], s.labels["account"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cdrsync_reject_records"
    }
    assert found == {("acefone", "in"): 4.0}
