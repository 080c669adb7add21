"""pdserve's vLLM plugin: with busy polling off, a reader of vLLM's shared-memory queue that read lately
sleeps a little between looks instead of yielding the CPU in a loop; an idle one still sleeps on the
writer's notification; with busy polling on (or unset), vLLM's own behaviour is kept."""

import threading
import time
import uuid

import pytest

pytest.importorskip("vllm")
zmq = pytest.importorskip("zmq")

from vllm.distributed.device_communicators.shm_broadcast import SpinCondition  # noqa: E402

from workers.engine import vllm_plugin  # noqa: E402
from workers.engine.vllm_engine import busy_poll  # noqa: E402


@pytest.fixture
def restore_wait():
    original = SpinCondition.wait
    yield
    SpinCondition.wait = original
    if hasattr(SpinCondition, "_pdserve_no_busy_poll"):
        del SpinCondition._pdserve_no_busy_poll


@pytest.fixture
def pair():
    context = zmq.Context()
    address = f"inproc://pdserve-test-{uuid.uuid4().hex}"
    writer = SpinCondition(is_reader=False, context=context, notify_address=address)
    reader = SpinCondition(is_reader=True, context=context, notify_address=address)
    time.sleep(0.05)  # the SUB socket's subscription reaches the PUB socket
    yield writer, reader
    for socket in (writer.local_notify_socket, reader.local_notify_socket, reader.read_cancel_socket,
                   reader.write_cancel_socket):
        socket.close(linger=0)
    context.term()


def _timed_wait(reader, timeout_ms=300) -> float:
    started = time.monotonic()
    reader.wait(timeout_ms=timeout_ms)
    return time.monotonic() - started


def test_vllms_default_spins_after_a_recent_read(restore_wait, pair, monkeypatch):
    monkeypatch.delenv(vllm_plugin.BUSY_POLL_ENV, raising=False)
    vllm_plugin.apply()  # unset: vLLM's behaviour
    _, reader = pair
    reader.record_read()
    assert _timed_wait(reader) < 0.05  # one sched_yield, back at once to check the buffer again


def test_busy_poll_off_sleeps_between_looks_and_idles_on_the_notification(restore_wait, pair, monkeypatch):
    monkeypatch.setenv(vllm_plugin.BUSY_POLL_ENV, "0")
    vllm_plugin.apply()
    vllm_plugin.apply()  # idempotent: vLLM may load plugins more than once
    writer, reader = pair
    reader.record_read()
    looks, started = 0, time.monotonic()
    while time.monotonic() - started < 0.1:
        reader.wait(timeout_ms=300)
        looks += 1
    assert looks <= 0.1 / vllm_plugin.POLL_S + 1  # each look slept, none came back at once
    reader.last_read = time.monotonic() - 2 * reader.busy_loop_s  # idle: vLLM's own path
    threading.Timer(0.05, writer.notify).start()
    waited = _timed_wait(reader, timeout_ms=5000)
    assert 0.04 <= waited < 1.0  # woken by the notification, not by the timeout


def test_busy_poll_resolves_to_vllms_default_on_gpus_only():
    assert busy_poll(None, on_gpu=False) is False and busy_poll(None, on_gpu=True) is True
    assert busy_poll(True, on_gpu=False) is True and busy_poll(False, on_gpu=True) is False
