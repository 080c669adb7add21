"""`pdserve generate`, `pdserve chat` and `pdserve status` as a user runs them: real subprocesses against
both API servers started in this process (`BackgroundServers`, a `FakeGateway` behind them).

Asserts on what a user or a script sees: stdout, stderr and exit codes (0 ok, 1 failed on the server,
2 bad input, 3 refused or unreachable).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.api.auth import ApiKeys
from pdserve.cli.generate import API_KEY_ENV, TARGET_ENV
from tests.fakes.certs import write_self_signed
from tests.fakes.gateway import MAX_MODEL_LEN, STATUS_KEYS, FakeGateway
from tests.fakes.servers import BackgroundServers

RUN_TIMEOUT_S = 60.0
_SCRIPT = shutil.which("pdserve", path=str(Path(sys.executable).parent))
PDSERVE = [_SCRIPT] if _SCRIPT else [sys.executable, "-c", "import sys; from pdserve.cli import main; sys.exit(main())"]


def pdserve(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; its environment drops the PDSERVE_* variables of ours, then adds `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
    return subprocess.run([*PDSERVE, *args], input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env={**clean, **(env or {})})


@pytest.fixture
def servers():
    with BackgroundServers() as running:
        yield running


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- generate ----------------------------------------------------------------------------------------

def test_generate_streams_the_answer(servers):
    result = pdserve("generate", "a b c", "--target", servers.grpc_target, "--temperature", "0")
    assert (result.returncode, result.stdout, result.stderr) == (0, "a b c \n", "")
    assert servers.gateway.requests[-1].sampling.temperature == 0


def test_generate_json_for_scripts(servers):
    result = pdserve("generate", "one two three", "--target", servers.grpc_target, "--json", "--max-tokens", "2",
                     "--thinking-budget", "8", "--deadline-ms", "5000")
    answer = json.loads(result.stdout)
    assert result.returncode == 0 and answer["text"] == "one two " and answer["finish_reason"] == "length"
    assert answer["usage"]["output_tokens"] == 2 and answer["error"] is None
    budget = servers.gateway.requests[-1].budget
    assert (budget.max_thinking_tokens, budget.deadline_ms) == (8, 5000)


def test_generate_reads_the_prompt_from_stdin_and_chats(servers):
    result = pdserve("generate", "-", "--chat", "--stop", "<end>", stdin="hello there", env={TARGET_ENV: servers.grpc_target})
    assert result.returncode == 0 and result.stdout == "user hello there \n"
    assert servers.gateway.requests[-1].prompt.messages[0].content == "hello there"


@pytest.mark.parametrize("args, wanted", [
    (["generate", ""], "the prompt is empty"),
    (["generate", "x", "--temperature", "-1"], "temperature is -1"),
    (["generate", "x", "--top-p", "1.5"], "top_p is 1.5"),
    (["generate", "x", "--max-tokens", "0"], "max_tokens is 0"),
    (["generate", "x", "--model", "gpt-5"], "'gpt-5' is not served here"),
    (["generate", " ".join(["w"] * MAX_MODEL_LEN)], "shorten the prompt"),
])
def test_bad_input_exits_2_with_the_servers_reason(servers, args, wanted):
    result = pdserve(*args, "--target", servers.grpc_target)
    assert result.returncode == 2 and wanted in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("error (")


def test_bad_flags_exit_2():
    result = pdserve("generate", "x", "--max-tokens", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_an_unreadable_ca_certificate_exits_2(servers, tmp_path):
    result = pdserve("generate", "x", "--target", servers.grpc_target, "--ca-cert", str(tmp_path / "missing.pem"))
    assert result.returncode == 2 and "missing.pem" in result.stderr


def test_an_unreachable_server_exits_3(closed_port):
    for command in (["generate", "x"], ["status"], ["status", "--json"]):
        result = pdserve(*command, "--target", f"127.0.0.1:{closed_port}")
        assert result.returncode == 3 and "error (UNAVAILABLE)" in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_a_generation_failing_on_the_server_exits_1(servers):
    servers.gateway.error_after = 1
    result = pdserve("generate", "a b c", "--target", servers.grpc_target)
    assert result.returncode == 1 and result.stdout.startswith("a ") and "decode worker lost" in result.stderr


def test_api_keys_from_the_flag_or_the_environment():
    with BackgroundServers(api_keys=ApiKeys({"sk-e2e": "team-e2e"})) as servers:
        refused = pdserve("generate", "x", "--target", servers.grpc_target)
        assert refused.returncode == 3 and "error (UNAUTHENTICATED)" in refused.stderr
        assert pdserve("generate", "x", "--target", servers.grpc_target, "--api-key", "sk-e2e").returncode == 0
        from_env = pdserve("status", env={TARGET_ENV: servers.grpc_target, API_KEY_ENV: "sk-e2e"})
        assert from_env.returncode == 0 and "prefill-0" in from_env.stdout
        assert servers.gateway.requests[-1].tenant == "team-e2e"


def test_tls_with_the_servers_ca(tmp_path):
    cert, key = write_self_signed(tmp_path)
    with BackgroundServers(gateway=FakeGateway(), tls_cert=cert, tls_key=key) as servers:
        result = pdserve("generate", "a b", "--target", servers.grpc_target, "--ca-cert", str(cert))
        assert (result.returncode, result.stdout) == (0, "a b \n")
        assert pdserve("status", "--target", servers.grpc_target, "--ca-cert", str(cert)).returncode == 0


@pytest.mark.parametrize("command", ["generate", "chat", "status"])
def test_help_shows_examples_and_exit_codes(command):
    result = pdserve(command, "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "exit codes:" in result.stdout
    assert f"pdserve {command}" in result.stdout


# ---- chat --------------------------------------------------------------------------------------------

def test_chat_keeps_the_history_and_obeys_commands(servers):
    script = "hello\nagain\n/reset\nfresh start\n/help\n/exit\nnever sent\n"
    result = pdserve("chat", "--target", servers.grpc_target, "--system", "be brief", "--max-tokens", "3",
                     stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["system be brief ", "system be brief ", "system be brief "]
    assert "(conversation forgotten)" in result.stderr and "/reset" in result.stderr
    histories = [[(m.role, m.content) for m in r.prompt.messages] for r in servers.gateway.requests]
    assert histories == [
        [("system", "be brief"), ("user", "hello")],
        [("system", "be brief"), ("user", "hello"), ("assistant", "system be brief "), ("user", "again")],
        [("system", "be brief"), ("user", "fresh start")],
    ]


def test_chat_reports_a_refused_message_drops_it_and_goes_on(servers):
    long_message = " ".join(["w"] * MAX_MODEL_LEN)
    result = pdserve("chat", "--target", servers.grpc_target, stdin=f"{long_message}\nshort\n")
    assert result.returncode == 2 and "shorten the prompt" in result.stderr
    assert result.stdout == "user short <end> \n"
    assert [len(r.prompt.messages) for r in servers.gateway.requests] == [1]  # the refused one left no trace


def test_chat_with_bad_sampling_flags_exits_2(servers):
    result = pdserve("chat", "--target", servers.grpc_target, "--temperature", "-2", stdin="hi\nhi again\n")
    assert result.returncode == 2 and result.stderr.count("temperature is -2") == 2 and result.stdout == ""


def test_chat_exits_1_when_an_answer_fails(servers):
    servers.gateway.error_after = 1
    result = pdserve("chat", "--target", servers.grpc_target, stdin="a b c\n")
    assert result.returncode == 1 and "decode worker lost" in result.stderr


def test_chat_with_an_unreachable_server_exits_3(closed_port):
    result = pdserve("chat", "--target", f"127.0.0.1:{closed_port}", stdin="hello\nsecond\n")
    assert result.returncode == 3 and result.stderr.count("error (UNAVAILABLE)") == 1


def test_chat_ends_at_end_of_input(servers):
    assert pdserve("chat", "--target", servers.grpc_target, stdin="").returncode == 0
    assert servers.gateway.requests == []


# ---- status ------------------------------------------------------------------------------------------

def test_status_prints_pools_and_workers(servers):
    servers.gateway.ready = False
    result = pdserve("status", "--target", servers.grpc_target)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert "model      fake-model" in lines and "ready      no" in lines and "mode       disaggregated" in lines
    header = next(line for line in lines if line.startswith("POOL"))
    assert header.split() == ["POOL", "REPLICAS", "WORKER", "STATE", "HEALTHY", "RUNNING", "WAITING", "KV",
                              "USED", "FREE", "BLOCKS", "KV", "ENDPOINT", "ERROR"]
    decode = next(line for line in lines if line.startswith("decode"))
    assert decode.split() == ["decode", "0/1", "decode-0", "starting", "no", "0", "0", "0.0%", "1024/1024",
                              "tcp://127.0.0.1:5601"]
    assert "           - planner off: fixed pool sizes" in lines


def test_status_json_is_the_raw_document(servers):
    result = pdserve("status", "--json", "--target", servers.grpc_target)
    document = json.loads(result.stdout)
    assert result.returncode == 0 and set(STATUS_KEYS) <= set(document)
    assert document["pools"]["prefill"]["workers"][0]["id"] == "prefill-0"
    assert document == servers.run(servers.gateway.status())


class PartialStatus(FakeGateway):
    """A server that sends only part of the document (an older or a starting cluster)."""

    async def status(self):
        return {"model": "m", "pools": {"decode": {"desired_replicas": 2, "workers": [{"id": "d-7", "kv_usage": "?"}]}},
                "planner": {"enabled": True, "last_reasons": "not a list"}}


def test_status_renders_missing_keys_as_dashes():
    with BackgroundServers(PartialStatus()) as servers:
        result = pdserve("status", "--target", servers.grpc_target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ready      -" in lines and "requests   - in flight, - queued, - total" in lines
    assert "planner    on: wants prefill -, decode -" in lines
    assert next(line for line in lines if line.startswith("prefill")).split() == ["prefill", "-/-"] + ["-"] * 9
    assert next(line for line in lines if line.startswith("decode")).split() == ["decode", "-/2", "d-7"] + ["-"] * 7
