"""Prometheus metrics of the server, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: they double the output and no dashboard uses them

TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "optimus_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.record_errors = Counter(
            "optimus_record_errors",
            "records answered with an error entry, by status",
            ["status"],
            registry=self.registry,
        )
        self.forward_failures = Counter(
            "optimus_forward_failures",
            "forward passes that failed (each failed batch is then split to isolate the failing tiles)",
            ["model"],
            registry=self.registry,
        )
        self.isolated_tiles = Counter(
            "optimus_isolated_tiles",
            "tiles that failed a forward pass alone and were answered 503, their neighbours answered",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "optimus_batch_size", "tiles per forward pass", ["model"], buckets=TILE_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "optimus_queue_wait_seconds",
            "time a decoded tile waits for its forward pass (tiles only: not metadata, not unhosted models)",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.forward = Histogram(
            "optimus_forward_seconds",
            "duration of one forward pass",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.decode = Histogram(
            "optimus_decode_seconds",
            "parsing and decoding of one request, whether or not it parsed",
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )

    def observe_forward(self, model: str, tiles: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(tiles)
        self.forward.labels(model).observe(seconds)

    def forward_failed(self, model: str, tiles: int) -> None:
        self.forward_failures.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
