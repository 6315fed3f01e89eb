"""Prometheus metrics of one server, in a registry of its own (``GET /metrics``).

The prediction logger keeps its own counters; they are read at scrape time (``stats()``), so
the queue depth and the drops Prometheus sees are the logger's, not a second count of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring import LoggerStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LoggerCollector(Collector):
    def __init__(self, stats: Callable[[], LoggerStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        records = CounterMetricFamily("vitedit_serve_logger_records",
                                      "Prediction records by logger outcome (dropped: refused "
                                      "because the queue was full)", labels=["outcome"])
        for outcome in ("logged", "accepted", "duplicates", "quarantined", "dropped", "lost"):
            records.add_metric([outcome], getattr(stats, outcome))
        yield records
        yield CounterMetricFamily("vitedit_serve_logger_failed_writes",
                                  "Batch writes to the monitoring store that raised (retried)",
                                  value=stats.failed_writes)
        settled = stats.accepted + stats.duplicates + stats.quarantined + stats.lost
        yield GaugeMetricFamily("vitedit_serve_logger_queue_depth",
                                "Records logged but not yet written to the store",
                                value=max(0, stats.logged - settled))


class ServingMetrics:
    """Requests, latency, batch sizes, champion reloads and the logger's counters."""

    def __init__(self, logger_stats: Callable[[], LoggerStats]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitedit_serve_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.images = Counter("vitedit_serve_images", "Images received, by outcome",
                              ["outcome"], registry=self.registry)
        self.latency = Histogram("vitedit_serve_request_seconds",
                                 "Time to answer a request, by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("vitedit_serve_batch_size",
                                    "Images per onnxruntime call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.reloads = Counter("vitedit_serve_champion_loads",
                               "Champion load attempts by outcome (loaded, refused: it did not "
                               "verify or the alias was moved outside vitedit-ops, failed)",
                               ["outcome"], registry=self.registry)
        self.webhooks = Counter("vitedit_serve_webhooks",
                                "MLflow webhook deliveries by outcome (accepted: the alias is "
                                "looked at now; ignored: another model or event; refused: not "
                                "authentic)", ["outcome"], registry=self.registry)
        self.champion = Gauge("vitedit_serve_champion_version",
                              "Version number of the champion being served (0: none)",
                              registry=self.registry)
        self.registry.register(_LoggerCollector(logger_stats))
