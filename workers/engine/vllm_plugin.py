"""pdserve's vLLM plugin: how vLLM's own processes wait for each other, set per engine.

vLLM loads every `vllm.general_plugins` entry point (pyproject.toml) in each of its processes (the
EngineCore and its workers) before they build their shared-memory queues. `apply()` changes nothing
unless the engine was started by pdserve with `PDSERVE_VLLM_BUSY_POLL=0` in its environment
(`VllmEngine` sets it from `engine.busy_poll`).

Why: an EngineCore hands each step to its worker process and reads the step's result back through
shared-memory ring buffers (`vllm.distributed.device_communicators.shm_broadcast`). A reader that read
in the last second spins on `sched_yield()` instead of sleeping, so under load the EngineCore spins for
the whole of every step it waits on, and the worker between steps. On a GPU host each spinner has a core
of its own; on the CPU the cores are the engines' compute and the control plane's: measured on the
2-core machine, an EngineCore yielded ~145,000 times a second, runnable all the time, and every token's
way out (the worker actor's output handler, Ray's stream, the gateway) queued behind the spinners.
With busy polling off, a reader in that busy second sleeps `POLL_S` between looks at the buffer instead
of yielding: it is runnable only when it looks, at the price of at most `POLL_S` more per hand-off.
Its idle path (after a second without reads: sleep on the writer's ZeroMQ notification) is vLLM's own.
Sleeping on the notification always is not an option: vLLM's notifications go through a PUB socket
with a high-water mark of 1 and are dropped under load (measured: readers then waited out vLLM's 5 s
recheck interval, and streams stalled 5-20 s).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

BUSY_POLL_ENV = "PDSERVE_VLLM_BUSY_POLL"
POLL_S = 0.0002  # how long a reader in its busy second sleeps between looks at the buffer


def apply() -> None:
    """The entry point: turn vLLM's shared-memory busy polling off when this engine asked for it."""
    if os.environ.get(BUSY_POLL_ENV, "1") != "0":
        return
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:  # another vLLM layout: keep its behaviour, say so once per process
        log.warning("pdserve: this vLLM has no shm_broadcast.SpinCondition; engine.busy_poll=false has no effect")
        return
    if getattr(SpinCondition, "_pdserve_no_busy_poll", False):
        return
    original_wait = SpinCondition.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(POLL_S)  # where vLLM would sched_yield()
        else:
            original_wait(self, timeout_ms)

    SpinCondition.wait = wait
    SpinCondition._pdserve_no_busy_poll = True
