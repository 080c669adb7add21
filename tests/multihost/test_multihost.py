"""pdserve on several hosts: prefill on one, decode on another, the head (gateway, APIs, controller) on a
third, each its own network namespace; the KV crosses real interfaces (hosts.py builds them).

Checked as a user of a real cluster would see it: each worker receives KV on its own host's address (not
loopback), greedy answers through the P/D path are right with the KV transferred (not recomputed), and
the transferred bytes show up on the prefill host's and the decode host's interfaces.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from hosts import VENV_BIN, MultiHost

pytestmark = [pytest.mark.multihost, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 16
# Prompts of several lengths (a few tokens to a few hundred): every one's KV goes from host to host.
PROMPTS = [
    "The capital of France is",
    "Write a short story about a lighthouse keeper who finds a message in a bottle. " * 4,
    "List the planets of the solar system in order from the sun, with one fact about each: " * 8,
    "Explain, step by step, how a bill becomes a law in a parliamentary democracy, and what can stop it. " * 12,
]
SETTLE_S = 1.0  # the status document's worker statistics are refreshed every 0.5 s


def _client(cluster: MultiHost):
    from pdserve import Client

    return Client(cluster.endpoints["grpc"], timeout_s=120)


def _endpoint_host(endpoint: str) -> str:
    return urlsplit(endpoint).hostname or ""


def _ready_workers(status: dict, tier: str) -> list[dict]:
    return [w for w in status["pools"][tier]["workers"] if w["state"] == "ready"]


def _settled_status(client) -> dict:
    """The status once the KV byte count stopped moving (the workers' stats reached the gateway)."""
    previous = client.status()
    while True:
        time.sleep(SETTLE_S)
        current = client.status()
        if current["transfers"]["bytes_total"] == previous["transfers"]["bytes_total"]:
            return current
        previous = current


def test_each_worker_receives_kv_on_its_own_hosts_address(multihost):
    with _client(multihost) as client:
        status = client.status()
    for tier in ("prefill", "decode"):
        hosts = {h.address for h in multihost.plan.hosts if h.role == tier}
        workers = _ready_workers(status, tier)
        assert len(workers) == len(hosts), f"not one ready {tier} worker per {tier} host: {status['pools'][tier]}"
        seen = set()
        for worker in workers:
            addresses = {_endpoint_host(e) for e in worker["kv_endpoints"].values()}
            assert len(addresses) == 1 and addresses <= hosts, f"{worker['id']} receives KV on {worker['kv_endpoints']}, not on one of {hosts}"
            assert not any(ipaddress.ip_address(a).is_loopback for a in addresses)
            seen |= addresses
        assert seen == hosts  # each host's worker on its own host


def test_greedy_answer_through_prefill_and_decode_hosts(multihost):
    with _client(multihost) as client:
        status = client.status()
        answer = client.generate("The capital of France is", max_tokens=MAX_TOKENS, temperature=0)
    assert "Paris" in answer.text, answer.text
    usage = answer.usage
    assert not usage.kv_recomputed, "the KV transfer failed and the decode worker recomputed the prompt"
    assert usage.prefill_worker in {w["id"] for w in _ready_workers(status, "prefill")}
    assert usage.decode_worker in {w["id"] for w in _ready_workers(status, "decode")}


def test_kv_bytes_cross_the_prefill_and_decode_hosts_interfaces(multihost):
    prefill_host = multihost.plan.host("prefill")
    decode_hosts = [h for h in multihost.plan.hosts if h.role == "decode"]

    def decode_received() -> int:  # what the decode hosts received, all together
        return sum(multihost.link_bytes(h).received for h in decode_hosts)

    with _client(multihost) as client:
        before_kv = _settled_status(client)["transfers"]
        before_prefill, before_decode = multihost.link_bytes(prefill_host), decode_received()
        # Numbered first, so that no prompt's prefix is cached on the decode worker (which would skip the prefill).
        prompts = [f"({i}) {prompt}" for i, prompt in enumerate(PROMPTS * 2)]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(lambda p: client.generate(p, max_tokens=MAX_TOKENS, temperature=0), prompts))
        after_kv = _settled_status(client)["transfers"]
    prefill_link = multihost.link_bytes(prefill_host) - before_prefill
    decode_link = decode_received() - before_decode
    recomputed = [a.usage.kv_recomputed or a.usage.prefill_skipped for a in answers]
    assert not any(recomputed), f"KV recomputed or prefill skipped instead of transferred: {recomputed}"
    kv_bytes = after_kv["bytes_total"] - before_kv["bytes_total"]
    transfers = after_kv["num_completed"] - before_kv["num_completed"]
    print(f"\n{len(answers)} requests, {transfers} transfers, {kv_bytes} KV bytes received by the decode workers; "
          f"prefill host {prefill_host.address} sent {prefill_link.sent} bytes, the decode hosts "
          f"received {decode_link} bytes; transfer ms per request: "
          f"{sorted(round(a.usage.transfer_ms, 1) for a in answers)}; prefill ms: {sorted(round(a.usage.prefill_ms, 1) for a in answers)}")
    assert transfers == len(answers)
    assert kv_bytes > 0
    assert prefill_link.sent >= kv_bytes, f"the prefill host sent {prefill_link.sent} bytes, less than the {kv_bytes} KV bytes"
    assert decode_link >= kv_bytes, f"the decode hosts received {decode_link} bytes, less than the {kv_bytes} KV bytes"


def test_ray_refuses_a_client_without_the_clusters_token(multihost, tmp_path):
    plan = multihost.plan
    host = plan.host("prefill")
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    results = {}
    for name, token in (("right", plan.work_dir / "ray_auth_token"), ("wrong", wrong), ("none", None)):
        env = plan.host_env(host, token or wrong, 1)
        if token is None:
            del env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"]
            env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
        results[name] = subprocess.run(["ip", "netns", "exec", host.namespace, str(VENV_BIN / "ray"), "status",
                                        "--address", plan.ray_address], env=env, capture_output=True, text=True, timeout=120)
    assert results["right"].returncode == 0, results["right"].stderr[-2000:]
    for tier in ("prefill", "decode"):  # every node joined, with its tier's resource
        hosts = plan.roles.count(tier)
        assert f"/{hosts}.0 {tier}" in results["right"].stdout, results["right"].stdout
    for name in ("wrong", "none"):
        assert results[name].returncode != 0
        output = results[name].stdout + results[name].stderr
        assert "InvalidAuthToken" in output, output[-2000:]
