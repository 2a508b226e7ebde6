"""``/metrics`` of ``nix-prefix serve``, in the Prometheus text format.

prometheus-client (the Prometheus project's own Python client) writes the
exposition format; each server has a registry of its own (tests run several
in one process).  Request counts and bytes are counted as requests end; the
rest (plans, cold work, streams, memory) is read from the server when scraped,
so nothing else in the server knows about Prometheus.

With several worker processes (builder/workers.py) a scrape reaches one of
them, so the figures are summed here rather than with prometheus-client's
multiprocess mode (which keeps only its own Counter and Gauge objects, not
figures read at scrape time): each worker writes its figures to the shared
dir (builder/sharing.py) every ``FLUSH`` seconds and when a sibling being
scraped asks (SIGUSR1); the one scraped waits for them (at most twice FLUSH)
before summing them all, so that a scrape counts every request answered
before it.  ``process_*`` stay the answering worker's own;
``nix_prefix_serve_workers`` and ``…_resident_memory_bytes`` (the sum) cover all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .limits import rss
from .sharing import Shared

PREFIX = "nix_prefix_serve"
FLUSH = 0.1  # seconds between two writes of a worker's figures

# name -> [help, kind ("gauge" | "counter"), label names, [[label values..., value], ...]]
Figures = dict[str, list[Any]]


class Metrics:
    """The registry of one server; ``state`` gives the figures read at scrape time:
    a dict of name -> (help, value, 'gauge' | 'counter') or, for labelled ones,
    name -> (help, {label value: value}, kind, label name).  ``shared``: the dir
    where the workers of one server sum their figures."""

    def __init__(self, state: Callable[[], dict[str, tuple[Any, ...]]],
                 shared: Shared | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        self._state = state
        self._shared = shared
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._bytes: collections.Counter[str] = collections.Counter()
        # A worker that replaces a dead one carries on its counters (counters never go down).
        previous = shared.previous_figures() if shared else None
        self._carried = _counters(previous) if previous else {}
        self.registry.register(_Collector(self._summed))

    def count(self, kind: str, status: int, sent: int) -> None:
        self._requests[kind, str(status)] += 1
        if sent:
            self._bytes[kind] += sent

    def figures(self) -> Figures:
        """This server's (or worker's) figures, as ``_Collector`` writes them."""
        out: Figures = {
            "requests": ["requests answered, by kind and status", "counter",
                         ["kind", "status"], [[k, s, n] for (k, s), n in self._requests.items()]],
            "sent_bytes": ["response body bytes sent, by kind", "counter", ["kind"],
                           [[k, n] for k, n in self._bytes.items()]]}
        for name, (help_text, value, kind, *label) in self._state().items():
            samples = [[k, v] for k, v in value.items()] if label else [[value]]
            out[name] = [help_text, kind, label, samples]
        if self._shared is not None:
            out["resident_memory_bytes"] = ["resident memory of the workers, summed",
                                            "gauge", [], [[rss()]]]
            out["workers"] = ["worker processes answering", "gauge", [], [[1]]]
        return merge([out, self._carried]) if self._carried else out

    def _summed(self) -> Figures:
        if self._shared is None:
            return self.figures()
        return merge(self._shared.all_figures())

    async def flush_forever(self) -> None:
        """Write this worker's figures to the shared dir every FLUSH seconds."""
        assert self._shared is not None
        while True:
            self._shared.write_figures(self.figures())
            await asyncio.sleep(FLUSH)

    def write_now(self) -> None:
        """Write this worker's figures at once (a sibling scrapes: SIGUSR1)."""
        assert self._shared is not None
        self._shared.write_figures(self.figures())

    async def handle(self, request: web.Request) -> web.Response:
        shared = self._shared
        if shared is not None:
            # Every worker writes what it answered before this scrape: asked by SIGUSR1,
            # or at its next FLUSH (one stopped or busy is read as it last wrote).
            since = time.time()
            self.write_now()
            for pid in shared.siblings():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + FLUSH * 2
            while not shared.written_since(since) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST,
                                     "Cache-Control": "no-store"})


def _counters(figures: Figures) -> Figures:
    return {name: f for name, f in figures.items() if f[1] == "counter"}


def merge(all_figures: list[Figures]) -> Figures:
    """The figures of several workers, summed sample by sample (same labels)."""
    out: Figures = {}
    sums: dict[str, collections.Counter[tuple[Any, ...]]] = {}
    for figures in all_figures:
        for name, (help_text, kind, labels, samples) in figures.items():
            if name not in out:
                out[name] = [help_text, kind, labels, []]
                sums[name] = collections.Counter()
            for *key, value in samples:
                sums[name][tuple(key)] += value
    for name, counter in sums.items():
        out[name][3] = [[*key, value] for key, value in counter.items()]
    return out


class _Collector(Collector):
    def __init__(self, figures: Callable[[], Figures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, (help_text, kind, labels, samples) in self._figures().items():
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                f"{PREFIX}_{name}", help_text, labels=labels or None)
            for *key, value in samples:
                family.add_metric([str(k) for k in key], value)
            yield family


async def flushing(app: web.Application, metrics: Metrics) -> AsyncIterator[None]:
    """An aiohttp cleanup context: ``metrics.flush_forever`` while the app runs."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(metrics.flush_forever())
    loop.add_signal_handler(signal.SIGUSR1, metrics.write_now)
    yield
    loop.remove_signal_handler(signal.SIGUSR1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
