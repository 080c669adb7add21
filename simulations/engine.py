"""One simulated engine (a worker's vLLM): chunked-prefill scheduling and continuous-batching decode.

Life of a step: 1. requests whose KV arrived advance their KV load (vLLM loads a received request's
KV asynchronously: it is scheduled `kv_load_steps` steps after the step boundary that first saw it;
an idle engine's empty steps take no time); 2. admit waiting decode requests while batch slots and KV
last; 3. if prompt work is queued, run one chunked step (prompt chunks up to the token budget plus one
token of each running request); 4. otherwise run decode steps until the first running request
finishes, as one event (the batch is unchanged in between, so the step-time model sums the steps in
closed form); a request that arrives meanwhile cuts that span short at the next step boundary.

A request stopped by its budget while the engine holds it (`cancel`) leaves at the next step boundary
(from a running batch) or at once (from a queue), giving back its KV; one inside a running prefill
step leaves when that step ends.

Steps are timed on the engine's `StretchedClock` (`simulations.interference`): in work time, which is
wall time unless the cluster slows the engine down (`slow_down`: tiers sharing a host, `on_step` tells
the cluster when a step starts or the engine goes idle); a step whose factor changes midway ends later
or sooner, each part of it at the factor of its time.

The engine knows only its own queues; the cluster (`simulations.cluster`) routes to it, moves KV out of
prefill engines, and hears about first tokens and finishes through the two callbacks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from simulations.events import Event
from simulations.interference import StretchedClock
from simulations.request import SimRequest
from simulations.timing import BaseTiming

Callback = Callable[[float, "Engine", SimRequest], "Iterable[Event] | None"]
IdleCallback = Callable[[float, "Engine"], None]
StepCallback = Callable[[float, "Engine"], "list[Event]"]


class Engine:
    """Queues, batch and KV of one engine. `tier`: "prefill", "decode" or "colocated"."""

    def __init__(self, worker_id: str, tier: str, timing: BaseTiming, num_gpus: int, max_num_seqs: int,
                 max_batched_tokens: int, on_prefilled: Callback, on_finished: Callback, started_s: float = 0.0,
                 kv_load_steps: int = 0, on_idle: IdleCallback | None = None,
                 on_step: StepCallback | None = None) -> None:
        self.worker_id, self.tier, self.timing, self.num_gpus = worker_id, tier, timing, num_gpus
        self.max_num_seqs, self.max_batched_tokens = max_num_seqs, max_batched_tokens
        self.kv_capacity = timing.kv_capacity_tokens()
        self.kv_load_steps = kv_load_steps
        self._on_prefilled, self._on_finished, self._on_idle = on_prefilled, on_finished, on_idle
        self._on_step = on_step  # a step starts or the engine goes idle: the cluster may slow engines down
        self.clock = StretchedClock()
        self.on_token_gaps: Callable[[float, int, float], None] | None = None  # (now, tokens, ms apart), when observed
        self._step_start_s = started_s
        self.prefill_queue: deque[SimRequest] = deque()
        self.loading: list[list] = []  # [request, step boundaries left] of received requests loading their KV
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.sum_context = 0
        self.kv_used = 0
        self.pending_prefill_tokens = 0
        self.num_incoming = 0  # routed here, still in prefill or transfer
        self.draining = False
        self.ready_s = started_s
        self.started_s, self.stopped_s = started_s, -1.0
        self.prefill_busy_s = self.decode_busy_s = 0.0
        self._busy = False
        self._has_cancelled = False
        self.boundary_s = started_s  # the last step boundary
        self.busy_until_s = 0.0  # when the step (or span) now running ends
        self.step_prompt_tokens = 0  # prompt tokens the running step computes (0: decode only, or idle)
        self._gen = 0
        self._span: tuple[float, int, int, int] | None = None  # (work start, batch, sum_context, steps) of a decode span
        self._chunks: list[tuple[SimRequest, int]] = []
        self._step_end_work_s = 0.0  # work time at which the running chunked step ends

    # Load as the router sees it ----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not (self._busy or self.prefill_queue or self.loading or self.waiting or self.running or self.num_incoming)

    @property
    def busy(self) -> bool:
        """A step (or a span of decode steps) is running."""
        return self._busy

    @property
    def num_waiting(self) -> int:
        return len(self.loading) + len(self.waiting) + len(self.prefill_queue) + self.num_incoming

    # Work arriving -----------------------------------------------------------------------------
    def enqueue_prefill(self, now: float, request: SimRequest) -> list[Event]:
        """Queue `request.prefill_left` prompt tokens to compute here."""
        self.prefill_queue.append(request)
        self.pending_prefill_tokens += request.prefill_left
        return self._wake(now)

    def enqueue_decode(self, now: float, request: SimRequest) -> list[Event]:
        """`request`'s KV is here: it joins the batch once its KV is loaded, at a step boundary with room."""
        if self.kv_load_steps:
            self.loading.append([request, self.kv_load_steps])
        else:
            self.waiting.append(request)
        return self._wake(now)

    def cancel(self, now: float, request: SimRequest) -> list[Event]:
        """Stop working on `request` (its budget ended it): it leaves a queue at once, a running batch at
        the next step boundary, a running prefill step when the step ends."""
        request.cancelled = True
        self._has_cancelled = True
        if request in self.running:
            return self._cut_span(now) if self._busy else []
        self._purge_cancelled()
        return [] if self._busy else self._start(now)

    def generated(self, request: SimRequest, now: float) -> tuple[int, float]:
        """Tokens `request` (prefilled here or decoding here) has generated by `now`, and when the last
        of them came out (a running decode span is counted step by step)."""
        done = request.output_tokens - request.remaining
        last_s = max(self.boundary_s, request.first_token_s)
        if request not in self.running:
            return done, (request.first_token_s if done <= 1 else last_s)
        if self._span is None:
            return done, last_s
        start, batch, sum_context, steps = self._span
        more = self.timing.decode_steps_within(batch, sum_context, (self.clock.work_s(now) - start) * 1e3, steps)
        if not more:
            return done, last_s
        return done + more, self.clock.wall_s(start + self.timing.decode_span_ms(batch, sum_context, more) / 1e3)

    def _purge_cancelled(self) -> None:
        if not self._has_cancelled:
            return
        self._has_cancelled = any(r.cancelled for r, _ in self._chunks)  # those leave when their step ends
        computing = {id(r) for r, _ in self._chunks}
        for request in [r for r in self.prefill_queue if r.cancelled and id(r) not in computing]:
            self.prefill_queue.remove(request)
            self.pending_prefill_tokens -= request.prefill_left
            self.kv_used -= request.kv_reserved
            request.kv_reserved = 0
        self.loading = [entry for entry in self.loading if not entry[0].cancelled]
        if any(r.cancelled for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if not r.cancelled)

    def _advance_loading(self) -> None:
        """One step boundary: received requests whose KV is loaded move to the waiting queue."""
        still = []
        for entry in self.loading:
            if entry[1] <= 0:
                self.waiting.append(entry[0])
            else:
                entry[1] -= 1
                still.append(entry)
        self.loading = still

    def release_kv(self, now: float, tokens: int) -> list[Event]:
        """The cluster moved a prefilled request's KV out of this (prefill) engine: queued prompts may fit now."""
        self.kv_used -= tokens
        return [] if self._busy else self._start(now)

    def fits(self, tokens: int) -> bool:
        """Could a request needing `tokens` of KV ever run here?"""
        return tokens <= self.kv_capacity

    def _wake(self, now: float) -> list[Event]:
        if not self._busy:
            return self._start(now)
        return self._cut_span(now)

    def _cut_span(self, now: float) -> list[Event]:
        """Shorten a running decode span to end at the next step boundary, so new work can join."""
        if self._span is None:
            return []
        start, batch, sum_context, steps = self._span
        done = self.timing.decode_steps_within(batch, sum_context, (self.clock.work_s(now) - start) * 1e3, steps)
        if done + 1 >= steps:
            return []
        self._span = (start, batch, sum_context, done + 1)
        return self._schedule_end()

    def slow_down(self, now: float, factor: float) -> list[Event]:
        """From `now` on the engine works `factor` times slower (1: full speed). Called by the cluster
        when the other tier on its host starts or stops computing; a running step ends accordingly later
        or sooner. Returns the step's new end event (the old one is then ignored)."""
        if factor == self.clock.factor:
            return []
        self.clock.set_factor(now, factor)
        return self._schedule_end() if self._span is not None or self._chunks else []

    def _schedule_end(self) -> list[Event]:
        """The end event of the running span or chunked step, at the clock's current factor."""
        self._gen += 1
        if self._span is not None:
            start, batch, sum_context, steps = self._span
            self.busy_until_s = self.clock.wall_s(start + self.timing.decode_span_ms(batch, sum_context, steps) / 1e3)
            return [(self.busy_until_s, self._span_done, self._gen)]
        self.busy_until_s = self.clock.wall_s(self._step_end_work_s)
        return [(self.busy_until_s, self._chunked_done, self._gen)]

    # Scheduling --------------------------------------------------------------------------------
    def _start(self, now: float) -> list[Event]:
        """A step boundary (or new work at an idle engine): form and run the next step."""
        self.boundary_s = now
        self.clock.forget_before(now)
        self._purge_cancelled()
        self._advance_loading()
        events = self._admit(now)
        if self.prefill_queue:
            chunks = self._form_chunks()
            if chunks:
                return events + self._run_chunked(now, chunks)
        if self.running:
            return events + self._run_span(now)
        if self.loading:  # nothing to compute: an empty step advances the KV loads and takes no time
            return events + self._start(now)
        self._busy = False
        self.step_prompt_tokens = 0
        if self._on_idle is not None:
            self._on_idle(now, self)
        return events + self._notify_step(now)

    def _admit(self, now: float) -> list[Event]:
        while self.waiting and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            need = request.context + request.remaining
            if self.kv_used + need > self.kv_capacity and self.running:
                break
            self.waiting.popleft()
            self.kv_used += need
            request.kv_reserved = need
            self._join(request)
        return []

    def _join(self, request: SimRequest) -> None:
        self.running.append(request)
        self.sum_context += request.context

    def _form_chunks(self) -> list[tuple[SimRequest, int]]:
        budget = self.max_batched_tokens - len(self.running)
        chunks: list[tuple[SimRequest, int]] = []
        for request in self.prefill_queue:
            if budget <= 0 or len(chunks) + len(self.running) >= self.max_num_seqs:
                break
            if request.kv_reserved == 0:
                need = request.prompt_tokens + (0 if self.tier == "prefill" else request.output_tokens)
                if self.kv_used + need > self.kv_capacity and (chunks or self.running or self.kv_used):
                    break
                self.kv_used += need
                request.kv_reserved = need
            take = min(request.prefill_left, budget)
            chunks.append((request, take))
            budget -= take
        return chunks

    def _run_chunked(self, now: float, chunks: list[tuple[SimRequest, int]]) -> list[Event]:
        self._busy = True
        self.step_prompt_tokens = sum(take for _, take in chunks)
        events = self._notify_step(now)  # before the step is timed: its own factor may change
        self._chunks = chunks
        for request, _ in chunks:
            if request.prefill_start_s < 0:
                request.prefill_start_s = now
        step_s = self.timing.mixed_ms([(take, r.prompt_tokens - r.prefill_left) for r, take in chunks],
                                      len(self.running), self.sum_context) / 1e3
        self._step_start_s = now
        self._step_end_work_s = self.clock.work_s(now) + step_s
        return events + self._schedule_end()

    def _run_span(self, now: float) -> list[Event]:
        self._busy = True
        self.step_prompt_tokens = 0
        events = self._notify_step(now)
        batch, steps = len(self.running), min(r.remaining for r in self.running)
        if self.loading:  # a request loading its KV joins at a boundary soon: run one step at a time
            steps = 1
        self._span = (self.clock.work_s(now), batch, self.sum_context, steps)
        self._step_start_s = now
        return events + self._schedule_end()

    def _notify_step(self, now: float) -> list[Event]:
        return self._on_step(now, self) if self._on_step is not None else []

    # Step completions --------------------------------------------------------------------------
    def _chunked_done(self, now: float, gen: int) -> list[Event]:
        if gen != self._gen:
            return []  # superseded: the step was slowed down or sped up
        self.prefill_busy_s += now - self._step_start_s
        if self.on_token_gaps is not None and self.running:
            self.on_token_gaps(now, len(self.running), (now - self._step_start_s) * 1e3)
        events = self._advance_decode(now, 1)
        for request, take in self._chunks:
            request.prefill_left -= take
            self.pending_prefill_tokens -= take
            if request.prefill_left == 0:
                self.prefill_queue.remove(request)
                events += self._prefilled(now, request)
        self._chunks = []
        return events + self._start(now)

    def _span_done(self, now: float, gen: int) -> list[Event]:
        if gen != self._gen or self._span is None:
            return []  # superseded by a shorter span
        _, batch, _, steps = self._span
        self._span = None
        self.decode_busy_s += now - self._step_start_s
        if self.on_token_gaps is not None:
            self.on_token_gaps(now, batch * steps, (now - self._step_start_s) * 1e3 / steps)
        return self._advance_decode(now, steps) + self._start(now)

    def _advance_decode(self, now: float, steps: int) -> list[Event]:
        if not self.running:
            return []
        events: list[Event] = []
        still = []
        for request in self.running:
            request.remaining -= steps
            request.context += steps
            if request.cancelled:
                self.kv_used -= request.kv_reserved
                request.kv_reserved = 0
            elif request.remaining <= 0:
                self.kv_used -= request.kv_reserved
                events += self._on_finished(now, self, request) or ()
            else:
                still.append(request)
        self.running = still
        self.sum_context = sum(r.context for r in still)
        return events

    def _prefilled(self, now: float, request: SimRequest) -> list[Event]:
        """The prompt is computed and its first token out: hand over (prefill tier) or start decoding."""
        if request.cancelled:  # its budget ended it during the step: nothing to hand over
            self.kv_used -= request.kv_reserved
            request.kv_reserved = 0
            return []
        request.first_token_s = now
        request.context = request.prompt_tokens + 1
        request.remaining = request.output_tokens - 1
        events = list(self._on_prefilled(now, self, request) or ())
        if self.tier == "prefill":
            return events
        if request.remaining <= 0:
            self.kv_used -= request.kv_reserved
            return events + list(self._on_finished(now, self, request) or ())
        self._join(request)
        return events
