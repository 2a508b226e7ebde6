"""``/metrics`` of ``nix-prefix serve``, in the Prometheus text format.

prometheus-client (the Prometheus project's own Python client) writes the
exposition format; each server has a registry of its own (tests run several
in one process).  Request counts and bytes are counted as requests end; the
rest (plans, cold work, streams, memory) is read from the server when scraped,
so nothing else in the server knows about Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

PREFIX = "nix_prefix_serve"


class Metrics:
    """The registry of one server; ``state`` gives the figures read at scrape time:
    a dict of name -> (help, value, 'gauge' | 'counter') or, for labelled ones,
    name -> (help, {label value: value}, kind, label name)."""

    def __init__(self, state: Callable[[], dict[str, tuple[Any, ...]]]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        self.requests = Counter(f"{PREFIX}_requests", "requests answered, by kind and status",
                                ["kind", "status"], registry=self.registry)
        self.bytes = Counter(f"{PREFIX}_sent_bytes", "response body bytes sent, by kind",
                             ["kind"], registry=self.registry)
        self.registry.register(_State(state))

    def count(self, kind: str, status: int, sent: int) -> None:
        self.requests.labels(kind, str(status)).inc()
        if sent:
            self.bytes.labels(kind).inc(sent)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST,
                                     "Cache-Control": "no-store"})


class _State(Collector):
    def __init__(self, state: Callable[[], dict[str, tuple[Any, ...]]]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, (help_text, value, kind, *label) in self._state().items():
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                f"{PREFIX}_{name}", help_text, labels=label or None)
            if label:
                for key, v in value.items():
                    family.add_metric([key], v)
            else:
                family.add_metric([], value)
            yield family
