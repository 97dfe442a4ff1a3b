"""Batcher priorities (no HTTP, fake model): background images (asynchronous jobs) only fill the
slots interactive images leave free, are capped per batch, and never make interactive callers
see a full queue."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_batching import FakeModel, img, run, wait_started

from service.batching import BACKGROUND, BatchPolicy, DynamicBatcher, QueueFullError, QueueLimits
from service.traffic import InteractiveTraffic


def test_interactive_images_go_first_and_background_share_is_capped():
    """While the worker is blocked, 10 background and then 3 interactive images queue up. The next
    batch holds the 3 interactive images first and at most max_background_per_batch background
    ones; every caller still gets its own rows."""
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.0, background_per_batch=2,
                                              background_per_batch_busy=2),
                           QueueLimits(max_images=16, max_background_images=16))
        b.start()
        first = asyncio.ensure_future(b.submit([img(1)]))
        await wait_started(model)  # the worker is busy with marker 1
        bg = asyncio.ensure_future(b.submit([img(100 + i) for i in range(10)], priority=BACKGROUND))
        await asyncio.sleep(0.01)
        inter = asyncio.ensure_future(b.submit([img(10), img(11), img(12)]))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 3 and b.background_depth == 10
        model.gate.set()
        out_first, out_bg, out_inter = await asyncio.gather(first, bg, inter)
        await b.close(5)
        return out_first, out_bg, out_inter

    out_first, out_bg, out_inter = run(body())
    assert model.batches[0] == [1]
    assert model.batches[1] == [10, 11, 12, 100, 101], model.batches
    assert all(len([m for m in batch if m >= 100]) <= 2 for batch in model.batches), model.batches
    np.testing.assert_array_equal(out_inter[:, 0], [10, 11, 12])
    np.testing.assert_array_equal(out_bg[:, 0], [100 + i for i in range(10)])
    assert sorted(model.ran()) == sorted([1, 10, 11, 12] + [100 + i for i in range(10)])


def test_background_batches_shrink_while_interactive_traffic_is_active():
    """Idle-time scheduling: background work alone uses its full share; after an interactive
    request (or a note_interactive() announcement) batches carry at most the busy share; once
    the busy window has passed, full chunks again. (The window is switched by setting
    busy_window_s, so a slow machine cannot make it expire mid-step.)"""
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=8, max_delay_s=0.0, background_per_batch=4,
                                              background_per_batch_busy=1),
                           QueueLimits(max_background_images=32), traffic=InteractiveTraffic(60))
        b.start()
        # 1) no interactive traffic yet: a background-only batch takes the full share (4)
        first = asyncio.ensure_future(b.submit([img(100 + i) for i in range(6)], priority=BACKGROUND))
        await wait_started(model)
        assert not b.interactive_active
        model.gate.set()
        await first
        assert model.batches[0] == [100, 101, 102, 103], model.batches
        # 2) an interactive request makes traffic active: background batches hold 1 image each
        model.gate.clear()
        inter = asyncio.ensure_future(b.submit([img(1)]))
        while len(model.batches) < 3:  # [100..103], [104, 105], then [1] (blocked on the gate)
            await asyncio.sleep(0.005)
        bg = asyncio.ensure_future(b.submit([img(200 + i) for i in range(3)], priority=BACKGROUND))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(inter, bg)
        n_before = len(model.batches)
        # 3) quiet (window 0), then an announcement alone (request still decoding) counts again
        b.traffic.busy_window_s = 0.0
        assert not b.interactive_active
        b.traffic.busy_window_s = 60.0
        b.traffic.note()
        assert b.interactive_active
        out = await b.submit([img(150 + i) for i in range(3)], priority=BACKGROUND)
        # 4) quiet again: full share
        b.traffic.busy_window_s = 0.0
        out2 = await b.submit([img(160 + i) for i in range(4)], priority=BACKGROUND)
        await b.close(5)
        return n_before, out, out2

    n_before, out, out2 = run(body())
    batches = model.batches
    later = batches[2:n_before]
    assert [1] in later and all(len([m for m in bt if 200 <= m < 300]) <= 1 for bt in later), batches
    assert all(len(bt) == 1 for bt in batches if bt and 150 <= bt[0] < 160), batches
    assert len([bt for bt in batches if bt and 150 <= bt[0] < 160]) == 3, batches
    assert batches[-1] == [160, 161, 162, 163], batches
    np.testing.assert_array_equal(out[:, 0], [150, 151, 152])
    np.testing.assert_array_equal(out2[:, 0], [160, 161, 162, 163])


def test_a_slot_stays_free_for_background_work_under_full_interactive_load():
    """Jobs never starve: with a full batch's worth of interactive images queued, the next batch
    still carries one background image."""
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.0, background_per_batch=2,
                                              background_per_batch_busy=1),
                           QueueLimits(max_images=16, max_background_images=4))
        b.start()
        first = asyncio.ensure_future(b.submit([img(1)]))
        await wait_started(model)
        bg = asyncio.ensure_future(b.submit([img(100)], priority=BACKGROUND))
        inter = asyncio.ensure_future(b.submit([img(10 + i) for i in range(8)]))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, bg, inter)
        await b.close(5)

    run(body())
    assert model.batches[1] == [10, 11, 12, 100], model.batches


def test_background_work_does_not_fill_the_interactive_queue():
    """A full background queue never turns interactive callers away; the background queue has its
    own bound and refuses the background caller instead."""
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.0),
                           QueueLimits(max_images=2, max_background_images=6))
        b.start()
        first = asyncio.ensure_future(b.submit([img(1)]))
        await wait_started(model)
        bg = asyncio.ensure_future(b.submit([img(100 + i) for i in range(6)], priority=BACKGROUND))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await b.submit([img(200)], priority=BACKGROUND)
        inter = asyncio.ensure_future(b.submit([img(2), img(3)]))  # fits: only interactive images count
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await b.submit([img(4)])  # the interactive queue (2) is full now
        model.gate.set()
        await asyncio.gather(first, bg, inter)
        await b.close(5)

    run(body())
    assert model.batches[1][:2] == [2, 3], model.batches


def test_cancelled_background_caller_leaves_the_queue():
    """Cancelling a background submit (a job cancelled by its owner) removes its waiting images."""
    model = FakeModel(blocking=True)

    async def body():
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=4, max_delay_s=0.0), QueueLimits(max_background_images=8))
        b.start()
        first = asyncio.ensure_future(b.submit([img(1)]))
        await wait_started(model)
        bg = asyncio.ensure_future(b.submit([img(100 + i) for i in range(5)], priority=BACKGROUND))
        await asyncio.sleep(0.01)
        assert b.background_depth == 5
        bg.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bg
        assert b.background_depth == 0
        model.gate.set()
        await first
        await b.close(5)

    run(body())
    assert model.ran() == [1]


def test_unknown_priority_is_refused():
    async def body():
        b = DynamicBatcher(FakeModel(), BatchPolicy(max_batch_size=2))
        b.start()
        with pytest.raises(ValueError):
            await b.submit([img(1)], priority="urgent")
        await b.close(5)

    run(body())
