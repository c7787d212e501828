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
