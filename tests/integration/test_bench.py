"""`pdserve bench` end to end against real servers on loopback.

The servers here are small stand-ins speaking the real wire protocols (the generated gRPC servicer of
`pdserve.v1.Inference`, and OpenAI-style SSE over aiohttp): they record what the bench sent and stream
tokens back with a small delay, so the tests check exact prompt lengths, prefix sharing, usage
aggregation, failure counting, timeouts, ramps and the exit codes a script sees.
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.api.pb import inference_pb2_grpc
from pdserve.cli import main

SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
MAX_MODEL_LEN = 2048
TOKEN_DELAY_S = 0.002


class Recorder:
    """What the stand-in servers received, and their failure injection."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []
        self.bodies: list[dict] = []
        self.reject_every = 0  # every Nth request is refused (0: never)
        self.hang = False  # streams one token and then never end
        self.lock = threading.Lock()

    def admit(self, prompt: list[int]) -> bool:
        with self.lock:
            self.prompts.append(list(prompt))
            return not (self.reject_every and len(self.prompts) % self.reject_every == 0)

    def in_flight(self) -> int:
        return len(self.prompts)


class FakeInference(inference_pb2_grpc.InferenceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.running = 0

    async def Generate(self, request, context):
        ids = list(request.token_ids.ids)
        if not self.recorder.admit(ids):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests")
        self.running += 1
        try:
            max_tokens = request.sampling.max_tokens
            for i in range(max_tokens):
                await asyncio.sleep(TOKEN_DELAY_S)
                if self.recorder.hang and i == 1:
                    await asyncio.sleep(3600)
                last = i == max_tokens - 1
                yield pb.GenerateResponse(
                    request_id="r", token_ids=[1000 + i], text="x",
                    finish_reason=pb.FINISH_REASON_LENGTH if last else pb.FINISH_REASON_UNSPECIFIED,
                    usage=pb.Usage(prompt_tokens=len(ids), output_tokens=max_tokens, queue_ms=1.5, prefill_ms=4.0,
                                   transfer_ms=0.5, decode_ms=8.0, prefill_skipped=len(ids) % 2 == 0)
                    if last else None)
        finally:
            self.running -= 1

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(id="tiny", max_model_len=MAX_MODEL_LEN)])

    async def GetClusterStatus(self, request, context):
        pools = {"prefill": {"desired_replicas": 1 + self.running // 4, "actual_replicas": 1},
                 "decode": {"desired_replicas": 1, "actual_replicas": 1}}
        return pb.GetClusterStatusResponse(status_json=json.dumps({"pools": pools}))


def http_app(recorder: Recorder) -> web.Application:
    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "tiny", "max_model_len": MAX_MODEL_LEN}]})

    async def completions(request):
        body = await request.json()
        recorder.bodies.append(body)
        if not recorder.admit(body["prompt"]):
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        n = body["max_tokens"]
        for i in range(n):
            await asyncio.sleep(TOKEN_DELAY_S)
            choice = {"index": 0, "text": "ab", "finish_reason": "length" if i == n - 1 else None}
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n, "total_tokens": len(body["prompt"]) + n,
                 "pdserve": {"queue_ms": 2.0, "prefill_ms": 3.0, "transfer_ms": 1.0, "decode_ms": 9.0,
                             "kv_recomputed": True}}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


class Servers:
    """Both servers on loopback, on an event loop in a background thread."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.grpc_server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServicer_to_server(FakeInference(self.recorder), self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        await self.grpc_server.start()
        self.runner = web.AppRunner(http_app(self.recorder))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop():
            await self.grpc_server.stop(0)
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def servers():
    running = Servers().start()
    yield running
    running.stop()


def _bench(tmp_path: Path, target: str, *flags: str, name: str = "run.json") -> tuple[int, dict | None]:
    out = tmp_path / name
    code = main(["bench", "--target", target, "--out", str(out), "--quiet", *flags])
    return code, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.parametrize("endpoint", ["grpc", "http"])
def test_synthetic_load_exact_lengths_and_report(servers, tmp_path, endpoint):
    port = servers.grpc_port if endpoint == "grpc" else servers.http_port
    code, doc = _bench(tmp_path, f"127.0.0.1:{port}", "--endpoint", endpoint, "--num-requests", "12",
                       "--rate", "60", "--prompt-tokens", "33", "--output-tokens", "5", "--slo-ttft-ms", "5000")
    assert code == 0
    assert [len(p) for p in servers.recorder.prompts] == [33] * 12
    assert len({tuple(p) for p in servers.recorder.prompts}) == 12  # random prompts, no accidental sharing
    summary = doc["summary"]
    assert (summary["num_succeeded"], summary["num_failed"], summary["output_length_mismatches"]) == (12, 0, 0)
    assert summary["ttft_ms"]["count"] == 12 and summary["tpot_ms"]["p50"] > 0
    assert summary["itl_ms"]["count"] == 12 * 4
    assert summary["throughput"]["output_tokens_per_s"] > 0
    assert summary["goodput"]["fraction"] == 1.0
    assert summary["usage"]["num_reported"] == 12 and summary["usage"]["decode_ms"]["p50"] > 0
    assert doc["command"].startswith("pdserve bench --target") and "--prompt-tokens 33" in doc["command"]
    assert doc["config"]["model"] == "tiny" and len(doc["requests"]) == 12
    if endpoint == "http":
        body = servers.recorder.bodies[0]
        assert body["stream"] and body["ignore_eos"] and body["stream_options"] == {"include_usage": True}
        assert summary["usage"]["kv_recomputed"] == 12  # read from the nested `pdserve` usage extension


@pytest.mark.parametrize("endpoint", ["grpc", "http"])
def test_refused_requests_are_counted_by_reason_and_exit_1(servers, tmp_path, endpoint):
    servers.recorder.reject_every = 4
    port = servers.grpc_port if endpoint == "grpc" else servers.http_port
    code, doc = _bench(tmp_path, f"127.0.0.1:{port}", "--endpoint", endpoint, "--num-requests", "12",
                       "--rate", "80", "--prompt-tokens", "8", "--output-tokens", "2")
    reason = "RESOURCE_EXHAUSTED" if endpoint == "grpc" else "http_429"
    assert code == 1
    assert doc["summary"]["failures"][reason]["count"] == 3
    assert doc["summary"]["num_succeeded"] == 9
    assert main(["bench", "--target", f"127.0.0.1:{port}", "--endpoint", endpoint, "--num-requests", "4",
                 "--rate", "80", "--prompt-tokens", "8", "--output-tokens", "2", "--out", str(tmp_path / "b.json"),
                 "--quiet", "--allow-failures"]) == 0


def test_a_hanging_stream_ends_as_a_timeout_failure(servers, tmp_path):
    servers.recorder.hang = True
    code, doc = _bench(tmp_path, f"127.0.0.1:{servers.grpc_port}", "--num-requests", "3", "--rate", "100",
                       "--prompt-tokens", "4", "--output-tokens", "4", "--request-timeout-s", "0.5")
    assert code == 1
    assert doc["summary"]["failures"]["timeout"]["count"] == 3


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="shared traces not present")
def test_mooncake_trace_replay_shares_prefixes_and_fits_the_context(servers, tmp_path):
    code, doc = _bench(tmp_path, f"127.0.0.1:{servers.grpc_port}", "--trace",
                       str(SHARED_TRACES / "mooncake_conversation_trace.jsonl"), "--num-requests", "10",
                       "--rate", "50", "--block-tokens", "32", "--max-prompt-tokens", "600", "--max-output-tokens", "4")
    assert code == 0
    prompts = servers.recorder.prompts
    assert all(len(p) <= 600 for p in prompts)
    # every request of this trace starts with hash id 0: the first 32-token block is the same everywhere
    assert len({tuple(p[:32]) for p in prompts}) == 1
    assert len({tuple(p[32:64]) for p in prompts if len(p) >= 64}) > 1
    assert any("clipped" in note or "scaled" in note for note in doc["notes"])


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="shared traces not present")
def test_azure_trace_replay_keeps_lengths_and_clips_to_the_context(servers, tmp_path):
    from simulations.traces import read_azure_csv

    path = SHARED_TRACES / "azure2023_code.csv"
    trace = read_azure_csv(path, limit=8)
    code, doc = _bench(tmp_path, f"127.0.0.1:{servers.http_port}", "--endpoint", "http", "--trace", str(path),
                       "--num-requests", "8", "--time-scale", "0.01", "--max-output-tokens", "3")
    assert code == 0
    sent = sorted(len(p) for p in servers.recorder.prompts)
    assert sent == sorted(min(r.prompt_tokens, MAX_MODEL_LEN - min(max(r.output_tokens, 1), 3)) for r in trace)
    assert [r["expected_output_tokens"] for r in doc["requests"]] == [min(max(r.output_tokens, 1), 3) for r in trace]
    scheduled = [r["scheduled_s"] for r in doc["requests"]]
    assert scheduled == pytest.approx([r.arrival_s * 0.01 for r in trace], abs=1e-6)


def test_ramp_writes_replicas_table_and_plot_and_compares(servers, tmp_path):
    target = f"127.0.0.1:{servers.grpc_port}"
    code, base = _bench(tmp_path, target, "--num-requests", "6", "--rate", "40", "--prompt-tokens", "8",
                        "--output-tokens", "3", name="base.json")
    assert code == 0
    code, doc = _bench(tmp_path, target, "--ramp", "--rate", "10", "--ramp-shape", "1,4,1", "--duration-s", "2.4",
                       "--ramp-lengths", "64x2,8x20,8x2", "--num-requests", "200", "--ramp-tail-s", "0.5",
                       "--poll-interval-s", "0.25", "--compare", str(tmp_path / "base.json"), name="ramp.json")
    assert code == 0
    phases = [r["phase"] for r in doc["requests"]]
    assert phases.count(1) > phases.count(0) and phases.count(1) > phases.count(2)
    rows = list(csv.DictReader(open(tmp_path / "ramp.replicas.csv")))
    assert len(rows) >= 8 and {"prefill_desired", "prefill_actual", "decode_actual"} <= set(rows[0])
    assert max(float(r["offered_rate_per_s"]) for r in rows) == 40.0
    assert (tmp_path / "ramp.replicas.png").read_bytes()[:4] == b"\x89PNG"
    ratios = {row["metric"]: row["ratio"] for row in doc["comparison"]["rows"]}
    assert ratios["ttft_ms.p50"] is not None


def test_unreachable_target_and_bad_input_exit_codes(tmp_path, capsys):
    assert main(["bench", "--target", "127.0.0.1:1", "--rate", "1", "--out", str(tmp_path / "x.json"),
                 "--connect-timeout-s", "1"]) == 3
    assert "cannot reach" in capsys.readouterr().err
    assert main(["bench", "--target", "127.0.0.1:1", "--endpoint", "http", "--rate", "1",
                 "--out", str(tmp_path / "x.json"), "--connect-timeout-s", "1"]) == 3
    assert main(["bench", "--target", "127.0.0.1:1", "--trace", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_prompt_over_the_model_context_is_refused_before_sending(servers, tmp_path, capsys):
    code, doc = _bench(tmp_path, f"127.0.0.1:{servers.grpc_port}", "--rate", "1", "--prompt-tokens", "2040",
                       "--output-tokens", "16")
    assert code == 2 and doc is None
    assert "exceeds the model context" in capsys.readouterr().err
    assert servers.recorder.prompts == []
