"""One engine's scheduling: the asynchronous KV load of received requests, and cancelling what it holds."""

import pytest

from simulations.engine import Engine
from simulations.request import SimRequest
from simulations.timing import CoefficientTiming

TIMING = CoefficientTiming(10.0, 0.0, 0.0, 10.0, 0.0, 0.0, kv_tokens=100_000)  # every step 10 ms


class Recorder:
    def __init__(self):
        self.finished = []

    def prefilled(self, now, engine, request):
        return []

    def done(self, now, engine, request):
        self.finished.append((round(now, 6), request.request_id))
        return []


def decode_engine(kv_load_steps, recorder):
    return Engine("decode-0", "decode", TIMING, 1, 64, 2048, recorder.prefilled, recorder.done,
                  kv_load_steps=kv_load_steps)


def received(request_id, output_tokens):
    """A request whose prefill is done elsewhere: first token out, the rest to decode here."""
    request = SimRequest(request_id, 0.0, 100, output_tokens)
    request.context, request.remaining, request.first_token_s = 101, output_tokens - 1, 0.0
    return request


def run(engine, arrivals):
    """Deliver (time, request) hand-offs and run the engine's events to the end."""
    from simulations.events import EventLoop
    loop = EventLoop()
    loop.schedule([(t, lambda now, r: engine.enqueue_decode(now, r), r) for t, r in arrivals])
    loop.run()


@pytest.mark.parametrize("kv_load_steps, joins_after_steps", [(0, 1), (1, 2)])
def test_a_request_received_by_a_busy_engine_joins_after_its_kv_load(kv_load_steps, joins_after_steps):
    recorder = Recorder()
    engine = decode_engine(kv_load_steps, recorder)
    # request 0 decodes 21 tokens (20 steps of 10 ms from t=0); request 1's KV lands at 25 ms, mid-step 3
    run(engine, [(0.0, received(0, 21)), (0.025, received(1, 3))])
    finish = {rid: t for t, rid in recorder.finished}
    # request 1 joins at the step boundary 30 ms (plus one boundary per load step), then decodes 2 tokens
    joined_s = 0.030 + (joins_after_steps - 1) * 0.010
    assert finish[1] == pytest.approx(joined_s + 0.020)
    assert finish[0] == pytest.approx(0.200)


def test_an_idle_engine_loads_received_kv_at_once():
    recorder = Recorder()
    engine = decode_engine(1, recorder)
    run(engine, [(0.5, received(0, 3))])
    assert recorder.finished == [(pytest.approx(0.52), 0)]


def test_cancelling_frees_queues_batches_and_kv():
    from simulations.events import EventLoop
    recorder = Recorder()
    engine = decode_engine(0, recorder)
    loop = EventLoop()
    long_one, queued = received(0, 1000), received(1, 10)
    engine.max_num_seqs = 1  # request 1 has to wait behind request 0
    loop.schedule(engine.enqueue_decode(0.0, long_one))
    loop.schedule(engine.enqueue_decode(0.0, queued))
    loop.run(until_s=0.05)
    assert list(engine.waiting) == [queued]
    loop.schedule(engine.cancel(0.05, queued))
    assert not engine.waiting
    loop.schedule([(0.1, lambda now, _: engine.cancel(now, long_one), None)])
    loop.run()
    assert recorder.finished == []  # a cancelled request is not reported as finished
    assert engine.idle and engine.kv_used == 0 and not engine.running
    assert engine.busy_until_s == pytest.approx(0.11)  # it left at the step boundary after the cancel
