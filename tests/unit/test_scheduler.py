"""Per-patient stream timing and state changes, with a trivial generator in place of the model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from models.conditions import CardiacState
from stream.events import state_to_dict
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.stream import PatientStream, StateChange, StreamClock

LEADS = tuple(f"L{i}" for i in range(12))


def _hr_generator(reqs):
    # encodes the requested heart rate in the samples, so the test can read what was asked
    return [np.full((r.n_samples, 12), r.state.heart_rate, np.float32) for r in reqs]


async def _stream(speed: float, lookahead: int = 3, gen=_hr_generator, context: int = 10):
    """A 1 s-segment stream (100 samples at 100 Hz) on ``gen``; published: (segment, monotonic)."""
    metrics = Metrics()
    batcher = MicroBatcher(gen, 16, 0.001, metrics)
    batcher.start()
    published = []

    async def publish(p, seg, change, truth=None):
        published.append((seg, time.monotonic()))

    p = Patient("p1", [1.0] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), state_event_id="reg")
    clock = StreamClock(speed)
    s = PatientStream(p, clock=clock, batcher=batcher, fs=100, segment_samples=100, context_samples=context,
                      lookahead=lookahead, leads=LEADS, model_version="m", publish=publish, metrics=metrics)
    s.start()
    return s, batcher, published, metrics


def _restored_stream(p: Patient, clock: StreamClock, lookahead: int = 3):
    """A stream rebuilt from the registry record ``p`` (1 s segments) on the heart-rate
    generator, not started; published: its segments."""
    metrics = Metrics()
    batcher = MicroBatcher(_hr_generator, 16, 0.001, metrics)
    batcher.start()
    published = []

    async def publish(p, seg, change, truth=None):
        published.append(seg)

    s = PatientStream(p, clock=clock, batcher=batcher, fs=100, segment_samples=100, context_samples=10,
                      lookahead=lookahead, leads=LEADS, model_version="m", publish=publish, metrics=metrics)
    return s, batcher, published


async def _until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_realtime_publishes_on_schedule():
    # 1 s segments due every 250 ms: a miss is 62 ms late (at every 50 ms, one 12 ms stall of a
    # loaded host failed it)
    s, batcher, published, metrics = await _stream(speed=4.0)
    await _until(lambda: len(published) >= 8)
    await s.stop()
    await batcher.stop()
    seqs = [seg.seq for seg, _ in published]
    assert seqs == list(range(len(seqs)))
    gaps = np.diff([t for _, t in published])
    assert 0.2 < np.median(gaps) < 0.3
    assert metrics.registry.get_sample_value("twin_deadline_misses_total") <= 1  # one stall, not a late stream


async def test_a_new_stream_starts_when_its_first_segment_is_ready():
    """A first segment that comes late (a burst of registrations) moves the stream's origin to
    when it is published instead of counting a miss; later segments keep the new origin. A later
    late segment is still a miss."""
    calls = []

    def slow_first(reqs):
        calls.append(len(reqs))
        if len(calls) in (1, 6):  # the first window, and one well into the stream
            time.sleep(0.6)
        return _hr_generator(reqs)

    # 1 s segments at x4: due every 0.25 s, the first 0.25 s after start; no look-ahead to hide
    # the later slow window behind
    s, batcher, published, metrics = await _stream(4.0, lookahead=1, gen=slow_first)
    await _until(lambda: len(published) >= 9)
    await s.stop()
    await batcher.stop()
    (seg0, t0), (seg1, t1) = published[:2]
    assert abs(s.clock.due(seg0.start_time) - t0) < 0.1  # stamped with when it actually went out
    assert t0 - s.clock.t0_mono > 0.5  # ... which was late against the original origin
    assert seg1.start_time - seg0.start_time == pytest.approx(1.0)
    assert abs(s.clock.due(seg1.start_time) - t1) < 0.1
    assert metrics.registry.get_sample_value("twin_deadline_misses_total") >= 1  # the slow sixth window, not the first


async def test_change_takes_effect_at_next_unpublished_segment_despite_lookahead():
    s, batcher, published, metrics = await _stream(speed=10.0, lookahead=4)
    await _until(lambda: len(published) >= 3)
    await _until(lambda: len(s.pending) >= 2)  # segments already generated ahead in the old state
    n_before = len(published)
    s.change_state(StateChange(CardiacState({"AFIB": 1.0}, 120), "chg", None, 0.0, time.monotonic()))
    await _until(lambda: len(published) >= n_before + 3)
    await s.stop()
    await batcher.stop()
    first_new = next(seg.seq for seg, _ in published if seg.event_id == "chg")
    assert first_new <= n_before + 1  # the pending old-state segments were dropped
    for seg, _ in published:
        assert (seg.event_id == "chg") == (seg.seq >= first_new)
        assert seg.samples[0, 0] == (120 if seg.seq >= first_new else 60)
    assert metrics.event_to_effect._sum.get() > 0


async def test_effective_time_and_heart_rate_transition():
    s, batcher, published, _ = await _stream(speed=20.0)
    await _until(lambda: len(published) >= 2)
    at = s.start_time(s.p.next_seq + 4)
    s.change_state(StateChange(CardiacState({"SR": 1.0}, 100), "ramp", at, 4.0, time.monotonic()))
    await _until(lambda: any(seg.event_id == "ramp" and seg.samples[0, 0] == 100 for seg, _ in published))
    await s.stop()
    await batcher.stop()
    ramp = [(seg.start_time, seg.samples[0, 0]) for seg, _ in published if seg.event_id == "ramp"]
    assert ramp[0][0] >= at - 1e-6  # nothing before the effective time
    hrs = [hr for _, hr in ramp]
    assert hrs[:4] == [70.0, 80.0, 90.0, 100.0]  # 4 s ramp over 1 s segments


async def test_changes_scheduled_ahead_all_happen_in_the_order_of_their_times():
    """Event time: two changes sent together for later times both happen, each from its time;
    a change for now, sent after them, does not cancel them; a heart-rate ramp starts from the
    rate of the segment before it."""
    s, batcher, published, _ = await _stream(speed=20.0)
    await _until(lambda: len(published) >= 2)
    n, now = s.p.next_seq, time.monotonic()
    s.change_state(StateChange(CardiacState({"SR": 1.0}, 90), "a", s.start_time(n + 3), 0.0, now))
    s.change_state(StateChange(CardiacState({"AFIB": 1.0}, 130), "b", s.start_time(n + 6), 2.0, now))
    s.change_state(StateChange(CardiacState({"SR": 1.0}, 75), "now", None, 0.0, now))
    await _until(lambda: len(published) >= n + 10)
    await s.stop()
    await batcher.stop()
    got = {seg.seq: (seg.event_id, float(seg.samples[0, 0])) for seg, _ in published if seg.seq >= n}
    want = {n + i: ("now", 75.0) if i < 3 else ("a", 90.0) if i < 6 else ("b", 110.0) if i == 6 else ("b", 130.0)
            for i in range(10)}
    assert got == want
    assert len(s.changes) <= 1  # what is wholly in effect is folded into the settled state


async def test_a_restored_stream_still_makes_the_changes_scheduled_ahead():
    """The registry's history keeps each change's time: a stream rebuilt from it (another
    worker, a restart) goes on with the state in effect at its next segment, a heart-rate ramp
    where it was, and makes the changes still to come."""
    clock = StreamClock(20.0)
    p = Patient("p1", [1.0] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), state_event_id="reg")
    p.set_state(CardiacState({"SR": 1.0}, 60), "reg", 0, 0.0)
    p.stream_start, p.next_seq = clock.now() - 5.0, 5  # five 1 s segments out before the restart
    nxt = p.stream_start + 5.0
    p.set_state(CardiacState({"SR": 1.0}, 80), "past", 3, 0.0, at=nxt - 2.0, transition=4.0)  # ramping 60 -> 80
    p.set_state(CardiacState({"AFIB": 1.0}, 120), "later", 5, 0.0, at=nxt + 2.0)
    s, batcher, published = _restored_stream(p, clock)
    s.start()
    await _until(lambda: len(published) >= 5)
    await s.stop()
    await batcher.stop()
    assert [(seg.seq, seg.event_id, float(seg.samples[0, 0])) for seg in published[:4]] == [
        (5, "past", 75.0), (6, "past", 80.0), (7, "later", 120.0), (8, "later", 120.0)]


async def test_lookahead_tail_spans_several_short_segments():
    """With segments shorter than the continuity context, each generated segment continues the
    whole stream before it, including segments still pending."""
    seen = []

    def gen(reqs):
        out = []
        for r in reqs:
            seen.append(r)
            out.append(np.full((r.n_samples, 12), float(r.seed % 1000), np.float32))
        return out

    s, batcher, published, _ = await _stream(50.0, gen=gen, context=250)
    await _until(lambda: len(published) >= 6)
    await s.stop()
    await batcher.stop()
    value = {seg.seq: seg.samples[0, 0] for seg, _ in published}
    for r in seen:
        seq = next((k for k, v in value.items() if v == float(r.seed % 1000)), None) if r.tail is not None else None
        if seq is None or seq < 3:
            continue
        expected = np.concatenate([np.full(50, value[seq - 3]), np.full(100, value[seq - 2]), np.full(100, value[seq - 1])])
        np.testing.assert_array_equal(r.tail[:, 0], expected)


async def test_window_samples_beyond_a_segment_open_the_next_one():
    """The model makes whole windows (150 samples here, for 100-sample segments): what a window
    makes past its segment opens the next one, so two windows serve three segments and the stream
    stays one continuous count; a state change drops the old state's spare samples."""
    asked = []

    def gen(reqs):
        out = []
        for r in reqs:
            asked.append(r.n_samples)
            start = 0 if r.tail is None else int(round(r.tail[-1, 0] * 1000)) + 1
            x = np.zeros((150, 12), np.float32)
            x[:, 0] = (start + np.arange(150)) / 1000  # a sample counter, exact through int16 tails
            x[:, 1] = r.state.heart_rate
            out.append(x)
        return out

    s, batcher, published, _ = await _stream(50.0, gen=gen)
    await _until(lambda: len(published) >= 6)
    s.change_state(StateChange(CardiacState({"AFIB": 1.0}, 120), "chg", None, 0.0, time.monotonic()))
    await _until(lambda: sum(seg.event_id == "chg" for seg, _ in published) >= 4)
    await s.stop()
    await batcher.stop()
    assert asked[:4] == [100, 50, 100, 50]  # segments 0-5 from four windows, 2 and 5 from spare alone
    count = np.round(np.concatenate([seg.samples[:, 0] for seg, _ in published]) * 1000).astype(int)
    np.testing.assert_array_equal(count, np.arange(len(count)))
    assert [seg.seq for seg, _ in published] == list(range(len(published)))
    for seg, _ in published:
        assert np.all(seg.samples[:, 1] == (120 if seg.event_id == "chg" else 60))


async def test_batcher_waits_for_company_but_not_past_a_deadline():
    """Far deadlines (and as-fast-as-possible ones, -inf) share a batch after up to ``max_wait``;
    a request due sooner than that goes at once rather than wait for company."""
    sizes = []

    def gen(reqs):
        sizes.append(len(reqs))
        return _hr_generator(reqs)

    from twin_engine.worker.generator import GenRequest

    def req():
        return GenRequest(np.ones(4, np.float32), CardiacState(), None, 10, 0)

    batcher = MicroBatcher(gen, 16, 0.5, Metrics())
    batcher.start()
    for deadline in (lambda: time.monotonic() + 60.0, lambda: float("-inf")):
        sizes.clear()
        first = asyncio.create_task(batcher.submit(req(), deadline()))
        await asyncio.sleep(0.1)
        await asyncio.gather(first, batcher.submit(req(), deadline()))
        assert sizes == [2]
    sizes.clear()
    urgent = asyncio.create_task(batcher.submit(req(), time.monotonic() + 0.05))
    await asyncio.sleep(0.2)
    assert urgent.done() and sizes == [1]
    await batcher.submit(req(), time.monotonic() + 60.0)
    assert sizes == [1, 1]
    await batcher.stop()


async def test_batcher_shrinks_a_batch_to_meet_an_urgent_deadline():
    """Behind a queue of far requests, one due in 0.25 s goes in a batch small enough to finish
    by then (10 ms a request: about 25), not in the full batch of 64 (0.64 s)."""
    from twin_engine.worker.generator import GenRequest

    sizes = []

    def gen(reqs):
        sizes.append(len(reqs))
        time.sleep(0.01 * len(reqs))
        return _hr_generator(reqs)

    def req():
        return GenRequest(np.ones(4, np.float32), CardiacState(), None, 10, 0)

    batcher = MicroBatcher(gen, 64, 0.0, Metrics())
    batcher.start()
    await batcher.submit(req(), time.monotonic() + 60.0)  # learns the time per request
    far = [asyncio.create_task(batcher.submit(req(), time.monotonic() + 60.0)) for _ in range(100)]
    urgent = asyncio.create_task(batcher.submit(req(), time.monotonic() + 0.25))
    await asyncio.gather(urgent, *far)
    assert sizes[0] == 1 and 5 <= sizes[1] <= 25  # the urgent one leads the second batch
    assert max(sizes[2:]) == 64  # then full batches again
    # one request already late goes alone; a backlog of late ones goes in full batches
    sizes.clear()
    await asyncio.gather(batcher.submit(req(), time.monotonic() - 1.0),
                         *(batcher.submit(req(), time.monotonic() + 60.0) for _ in range(63)))
    assert sizes[0] == 1
    sizes.clear()
    late = [asyncio.create_task(batcher.submit(req(), time.monotonic() - 1.0)) for _ in range(64)]
    await asyncio.gather(*late)
    assert sizes == [64]
    await batcher.stop()


def test_count_due_matches_a_full_count_up_to_its_limit():
    """The batcher counts late requests by walking the heap from its root: the same count as a
    scan of the whole queue, up to the limit, on heaps of every shape."""
    import heapq
    import random

    from twin_engine.worker.batcher import count_due

    rng = random.Random(0)
    for trial in range(300):
        heap: list[tuple[float, int]] = []
        for i in range(rng.randrange(0, 200)):
            heapq.heappush(heap, (rng.uniform(-5, 5), i))
        now, limit = rng.uniform(-6, 6), rng.randrange(1, 80)
        assert count_due(heap, now, limit) == min(limit, sum(d <= now for d, _ in heap)), trial


async def test_a_failed_publication_is_retried_and_the_stream_goes_on(monkeypatch):
    """The broker unreachable past the producer's own retries: the segment stays, is sent again,
    and the stream neither dies nor skips a sequence number."""
    import twin_engine.worker.stream as scheduler

    monkeypatch.setattr(scheduler, "PUBLISH_RETRY_S", 0.05)
    metrics = Metrics()
    batcher = MicroBatcher(_hr_generator, 16, 0.001, metrics)
    batcher.start()
    published, calls = [], []

    async def publish(p, seg, change, truth=None):
        calls.append(seg.seq)
        if len(calls) in (3, 4):  # the third segment fails twice
            raise ConnectionError("broker unreachable")
        published.append(seg)

    p = Patient("p1", [1.0] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), state_event_id="reg")
    s = PatientStream(p, clock=StreamClock(20.0), batcher=batcher, fs=100, segment_samples=100, context_samples=10,
                      lookahead=3, leads=LEADS, model_version="m", publish=publish, metrics=metrics)
    s.start()
    await _until(lambda: len(published) >= 6)
    assert not s.task.done()
    await s.stop()
    await batcher.stop()
    assert calls[:5] == [0, 1, 2, 2, 2]
    assert [seg.seq for seg in published] == list(range(len(published)))
    assert metrics.registry.get_sample_value("twin_publish_failures_total") == 2


@pytest.mark.parametrize("context", [10, 250])
async def test_stored_tail_is_the_published_end_of_the_stream(context):
    """The stream position's tail (what a restart continues from) is the last ``context``
    samples as published, int16 and all, whether it lies within the last segment (10) or spans
    several shorter segments (250 samples, 100 per segment)."""
    from twin_engine.worker.generator import unpack_tail

    rng = np.random.default_rng(0)

    def gen(reqs):
        return [rng.standard_normal((r.n_samples, 12)).astype(np.float32) for r in reqs]

    s, batcher, published, _ = await _stream(50.0, gen=gen, context=context)
    await _until(lambda: len(published) >= 4)
    await s.stop()
    await batcher.stop()
    stream = np.concatenate([seg.quantized for seg, _ in published])  # int16, as published
    stored = unpack_tail(s.p.tail_b64, 12)
    assert s.p.next_seq == published[-1][0].seq + 1
    np.testing.assert_array_equal(np.round(stored * 1000).astype(np.int16), stream[-context:])


async def test_a_scheduled_end_publishes_what_starts_before_it_then_ends_once():
    """``remove_at`` set on a running stream: the segments starting before it go out (those
    generated ahead past it never do), then, once the last one has played out, ``on_end`` runs
    once and the stream's task ends."""
    s, batcher, published, _ = await _stream(20.0, lookahead=3)  # 1 s segments every 50 ms
    ended = []
    s.on_end = lambda: ended.append((s.p.next_seq, time.monotonic()))
    await _until(lambda: len(published) >= 2)
    s.p.remove_at = s.start_time(s.p.next_seq + 2) + 0.5  # mid-segment: the one starting before it is the last
    last = s.p.next_seq + 2
    await asyncio.wait_for(s.task, 10)
    await batcher.stop()
    assert [seg.seq for seg, _ in published] == list(range(last + 1))
    assert [seq for seq, _ in ended] == [last + 1]
    assert ended[0][1] >= s.clock.due(s.start_time(last + 1)) - 0.005  # not before the last one ends


async def test_an_end_moved_later_while_the_last_segment_plays_out_costs_no_deadline():
    """A second ``remove`` moving the end later reaches a stream already waiting out its last
    segment: it generates on at once, so a generator slower than nothing still meets every
    deadline, and ``on_end`` runs once, at the new end."""
    def slow(reqs):
        time.sleep(0.2)  # well within a 0.5 s segment, but too slow to start only when one is due
        return _hr_generator(reqs)

    s, batcher, published, metrics = await _stream(2.0, lookahead=3, gen=slow)  # 1 s segments every 0.5 s
    ended = []
    s.on_end = lambda: ended.append(s.p.next_seq)
    await _until(lambda: len(published) >= 1)
    last = s.p.next_seq + 1
    s.p.remove_at = s.start_time(last + 1)
    s.end_moved()
    await _until(lambda: len(published) >= last + 1 and not s.pending and s._gen is None)  # waiting out `last`
    await asyncio.sleep(0.1)
    s.p.remove_at = s.start_time(last + 3)
    s.end_moved()
    await asyncio.wait_for(s.task, 10)
    await batcher.stop()
    assert [seg.seq for seg, _ in published] == list(range(last + 3))
    assert ended == [last + 3]
    assert metrics.registry.get_sample_value("twin_deadline_misses_total") == 0


def test_the_registry_history_keeps_every_change_still_to_come():
    """A scenario may schedule more changes for one patient than the history's limit: the
    history then drops the changes wholly in the past (oldest first), never one still to come,
    so a stream rebuilt from it after a restart still makes all of them, from the right state."""
    from twin_engine.registry import HISTORY_LIMIT

    clock = StreamClock(1.0)
    p = Patient("p1", [1.0] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), state_event_id="reg")
    p.stream_start, p.next_seq = clock.now() - 100.0, 100  # 1 s segments, 100 out
    nxt = p.stream_start + 100.0
    p.set_state(CardiacState({"SR": 1.0}, 60), "reg", 0, 0.0)
    for i in range(HISTORY_LIMIT):  # changes that have all happened
        p.set_state(CardiacState({"SR": 1.0}, 61 + i), f"past-{i}", i, 0.0, at=p.stream_start + i, now=nxt)
    ahead = 2 * HISTORY_LIMIT
    for i in range(ahead):  # a long timeline sent at once, then a change for now
        p.set_state(CardiacState({"AFIB": 1.0}, 100 + i), f"later-{i}", 100, 0.0, at=nxt + 10 + i, now=nxt)
    p.set_state(CardiacState({"SR": 1.0}, 70), "now", 100, 0.0, at=nxt, now=nxt)
    assert len(p.history) == ahead + 1  # the past is gone but for the state in effect: "now"
    # a timeline re-delivered (a crash before its offsets were committed) is applied once
    # however long it is: what is still to come counts as seen
    assert p.saw("later-0") and not p.saw("past-0") and not p.seen_events
    s = PatientStream(p, clock=clock, batcher=None, fs=100, segment_samples=100, context_samples=10, lookahead=3,
                      leads=LEADS, model_version="m", publish=None, metrics=Metrics())
    assert s.state_for(100).heart_rate == 70
    assert [s.state_for(110 + i).heart_rate for i in range(ahead)] == [100 + i for i in range(ahead)]
    # changes keep being trimmed once they are in the past
    later = nxt + 10 + ahead
    for i in range(3 * HISTORY_LIMIT):
        p.set_state(CardiacState({"SR": 1.0}, 50 + i % 50), f"more-{i}", 100, 0.0, at=later + i, now=later + i)
    assert len(p.history) <= HISTORY_LIMIT and p.history[-1].event_id == f"more-{3 * HISTORY_LIMIT - 1}"


async def test_a_stream_restored_with_another_segment_length_goes_on_from_where_it_was():
    """The segment length is configuration and may change across a restart: the restored stream
    starts its next segment where its last one ended, not next_seq x the new length from its
    origin (here that would be 500 s ahead: 500 s of silence)."""
    clock = StreamClock(1.0)
    p = Patient("p1", [1.0] * 4, "m", state_to_dict(CardiacState({"SR": 1.0}, 60)), state_event_id="reg")
    p.stream_start, p.next_seq, p.segment_seconds = clock.now() - 500.0 + 0.2, 1000, 0.5  # 1,000 half-second segments out
    old_next = p.stream_start + 500.0
    s, batcher, published = _restored_stream(p, clock, lookahead=2)
    assert s.start_time(1000) == pytest.approx(old_next, abs=1e-6) and p.segment_seconds == 1.0
    s.start()
    await _until(lambda: len(published) >= 2, timeout=5.0)
    await s.stop()
    await batcher.stop()
    assert [seg.seq for seg in published[:2]] == [1000, 1001]
    assert published[1].start_time == pytest.approx(old_next + 1.0, abs=1e-6)
