"""builder/metrics.py: /metrics of one server, and of several workers summed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import generate_latest

from nix_prefix.builder.metrics import Metrics, merge
from nix_prefix.builder.sharing import Shared


def _state(active: int):
    return lambda: {"streams_active": ("NAR responses in progress", active, "gauge"),
                    "clients_dropped": ("clients dropped", {"slow": active, "stalled": 0},
                                        "counter", "reason")}


def _lines(metrics: Metrics) -> list[str]:
    return generate_latest(metrics.registry).decode().splitlines()


def test_one_server() -> None:
    metrics = Metrics(_state(3))
    metrics.count("narinfo", 200, 100)
    metrics.count("narinfo", 200, 50)
    lines = _lines(metrics)
    for wanted in ('nix_prefix_serve_requests_total{kind="narinfo",status="200"} 2.0',
                   'nix_prefix_serve_sent_bytes_total{kind="narinfo"} 150.0',
                   "nix_prefix_serve_streams_active 3.0",
                   'nix_prefix_serve_clients_dropped_total{reason="slow"} 3.0'):
        assert wanted in lines, wanted
    assert not any("workers" in line for line in lines)


def test_workers_are_summed_and_a_replacement_carries_counters_on(tmp_path: Path) -> None:
    one = Metrics(_state(1), Shared(tmp_path, 0))
    two = Metrics(_state(2), Shared(tmp_path, 1))
    one.count("nar", 200, 10)
    two.count("nar", 200, 5)
    two.count("nar", 503, 0)
    Shared(tmp_path, 0).write_figures(one.figures())
    Shared(tmp_path, 1).write_figures(two.figures())
    lines = _lines(one)
    for wanted in ('nix_prefix_serve_requests_total{kind="nar",status="200"} 2.0',
                   'nix_prefix_serve_requests_total{kind="nar",status="503"} 1.0',
                   'nix_prefix_serve_sent_bytes_total{kind="nar"} 15.0',
                   "nix_prefix_serve_streams_active 3.0", "nix_prefix_serve_workers 2.0"):
        assert wanted in lines, wanted
    # Either worker answers the same (but for process_*, each its own process's).
    assert [x for x in lines if "nix_prefix" in x] == [x for x in _lines(two) if "nix_prefix" in x]
    # Worker 1 died; its replacement starts with its counters, not its gauges.
    again = Metrics(_state(0), Shared(tmp_path, 1))
    again.count("nar", 200, 1)
    figures = again.figures()
    assert figures["requests"][3] == [["nar", "200", 2], ["nar", "503", 1]]
    assert figures["streams_active"][3] == [[0]]


def test_a_scrape_writes_its_own_figures_first(tmp_path: Path) -> None:
    metrics = Metrics(_state(0), Shared(tmp_path, 0))
    metrics.count("healthz", 200, 3)

    async def scrape() -> bytes:
        return (await metrics.handle(None)).body  # type: ignore[arg-type]
    body = asyncio.run(scrape()).decode()
    assert 'nix_prefix_serve_requests_total{kind="healthz",status="200"} 1.0' in body


def test_merge_sums_samples_with_the_same_labels() -> None:
    a = {"x": ["h", "counter", ["k"], [["a", 1], ["b", 2]]]}
    b = {"x": ["h", "counter", ["k"], [["b", 3]]], "y": ["h", "gauge", [], [[4]]]}
    assert merge([a, b]) == {"x": ["h", "counter", ["k"], [["a", 1], ["b", 5]]],
                             "y": ["h", "gauge", [], [[4]]]}
