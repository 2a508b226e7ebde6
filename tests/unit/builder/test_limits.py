"""builder/limits.py: the cold-work scheduler, driven directly on an event loop, and the
memory budget (issue 26).  The limits as a running server meets them are in
tests/e2e/test_serve_limits.py."""

from __future__ import annotations

import asyncio

import pytest

from nix_prefix.builder import limits as limits_module
from nix_prefix.builder.errors import BuildError
from nix_prefix.builder.limits import (
    Busy,
    ColdScheduler,
    Limits,
    MemoryBudget,
    buffer_budget,
    parse_size,
)


def test_cold_work_is_fair_bounded_and_shared() -> None:
    limits = Limits(cold=1, cold_per_client=1, cold_queue=5, cold_queue_per_client=4)
    order: list[str] = []

    async def scenario() -> tuple[list[str], int, int]:
        scheduler = ColdScheduler(limits)
        gate = asyncio.Event()
        made = 0

        def job(name: str):
            async def work() -> str:
                nonlocal made
                made += 1
                await gate.wait()
                order.append(name)
                return name
            return work

        # A floods: one runs, four wait, the sixth is refused (its own bound).
        a = [asyncio.create_task(scheduler.run("10.0.0.1", f"a{i}", job(f"a{i}")))
             for i in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await scheduler.run("10.0.0.1", "a5", job("a5"))
        # B comes later, with one job: it runs second, not sixth.
        b = asyncio.create_task(scheduler.run("10.0.0.2", "b0", job("b0")))
        await asyncio.sleep(0)
        # The total bound (5 waiting) is reached: C is refused.
        with pytest.raises(Busy):
            await scheduler.run("10.0.0.3", "c0", job("c0"))
        # The same key as a job under way: shared, not run twice.
        again = asyncio.create_task(scheduler.run("10.0.0.4", "a0", job("never")))
        await asyncio.sleep(0)
        assert (scheduler.running, scheduler.waiting) == (1, 5)
        gate.set()
        results = await asyncio.gather(*a, b, again)
        assert results[-1] == "a0"
        return order, made, scheduler.refused

    order, made, refused = asyncio.run(scenario())
    assert order[:2] == ["a0", "b0"] and sorted(order) == sorted(
        [f"a{i}" for i in range(5)] + ["b0"])
    assert made == 6 and refused == 2


def test_memory_budget_and_sizes() -> None:
    budget = MemoryBudget(100)
    assert budget.try_take(60) and not budget.try_take(41)
    assert not budget.take(41, 0.05)
    budget.give(60)
    assert budget.take(100, 0) and budget.used == 100
    assert [parse_size(t) for t in ("4K", "512M", "2G", "100", "1MiB")] == \
        [4096, 512 << 20, 2 << 30, 100, 1 << 20]
    with pytest.raises(BuildError):
        parse_size("lots")
    with pytest.raises(BuildError) as e:
        buffer_budget(Limits(max_memory=100 << 20), resident=80 << 20)
    assert "--max-memory 100M is too little" in str(e.value)


MiB = 1 << 20


def test_max_memory_is_split_among_workers() -> None:
    """--max-memory is the total: each of N workers gets 1/N of it, less what it
    holds and the reserve; the server-wide bounds are split, the per-client ones not."""
    limits = Limits(max_memory=1536 * MiB)
    one, two = limits_module.per_worker(limits, 1), limits_module.per_worker(limits, 2)
    assert buffer_budget(one, resident=64 * MiB) == (1536 - 64 - 96) * MiB
    assert buffer_budget(two, resident=64 * MiB) == (768 - 64 - 96) * MiB
    assert (two.producers, two.cold, two.cold_queue, two.max_responses) == (4, 1, 128, 256)
    assert (two.streams_per_client, two.cold_per_client, two.stream_buffer) == \
        (limits.streams_per_client, limits.cold_per_client, limits.stream_buffer)
    three = limits_module.per_worker(Limits(producers=8, cold=1, cold_queue=0), 3)
    assert (three.producers, three.cold, three.cold_queue) == (3, 1, 0)
    with pytest.raises(BuildError) as e:
        buffer_budget(limits_module.per_worker(Limits(max_memory=300 * MiB), 2), resident=64 * MiB)
    assert "--max-memory 300M is too little for 2 workers" in str(e.value)
    assert "fewer --workers" in str(e.value.hint)


def test_default_workers_are_the_cpus_the_memory_allows() -> None:
    assert limits_module.default_workers(Limits(max_memory=1536 * MiB), 2, resident=64 * MiB) == 2
    assert limits_module.default_workers(Limits(max_memory=1536 * MiB), 16, resident=64 * MiB) == 5
    assert limits_module.default_workers(Limits(max_memory=400 * MiB), 2, resident=64 * MiB) == 1
    assert limits_module.default_workers(Limits(max_memory=100 * MiB), 2, resident=64 * MiB) == 1
