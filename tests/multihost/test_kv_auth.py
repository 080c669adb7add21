"""A rogue KV sender on another host: it reaches the decode workers' KV ports and knows the transfer ids of
live requests (they are the request ids, which clients may choose), but not the cluster's KV secret. Its
forged frames and aborts are refused and counted; the real requests running meanwhile are untouched (their
KV transferred, not recomputed, and their answers token-identical).
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hosts import VENV_BIN, MultiHost

pytestmark = [pytest.mark.multihost, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

ROGUE = Path(__file__).with_name("rogue.py")
ROGUE_S = 8.0
PROMPTS = [f"({i}) Write two sentences about the harbour at dawn, number {i}." for i in range(4)]
MAX_TOKENS = 24


def _answers(client, request_ids: list[str] | None = None) -> list:
    ids = request_ids or [""] * len(PROMPTS)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda p, r: client.generate(p, max_tokens=MAX_TOKENS, temperature=0, request_id=r),
                             PROMPTS, ids))


def _auth_failures(client) -> int:
    time.sleep(1.0)  # the workers' stats reach the gateway every 0.5 s
    return client.status()["transfers"]["auth_failures"]


def test_a_rogue_kv_sender_on_another_host_is_refused_and_counted(multihost: MultiHost):
    from pdserve import Client

    plan = multihost.plan
    rogue_host = plan.host("prefill")  # another host of the cluster's network: as a compromised neighbour would be
    with Client(multihost.endpoints["grpc"], timeout_s=120) as client:
        expected = [a.token_ids for a in _answers(client)]
        decode_workers = [w for w in client.status()["pools"]["decode"]["workers"] if w["state"] == "ready"]
        before = _auth_failures(client)
        request_ids = [f"rogue-target-{i}-{time.time_ns()}" for i in range(len(PROMPTS))]
        rogues = [subprocess.Popen(["ip", "netns", "exec", rogue_host.namespace, str(VENV_BIN / "python"), str(ROGUE),
                                    w["kv_endpoints"]["zmq"], w["kv_endpoints"]["grpc"], str(ROGUE_S),
                                    *(f"{r}-kv" for r in request_ids)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for w in decode_workers]
        try:
            time.sleep(1.0)  # the rogues are sending when the real requests' transfers start
            answers = _answers(client, request_ids)
            reports = [json.loads(r.communicate(timeout=120)[0].strip().splitlines()[-1]) for r in rogues]
        finally:
            for rogue in rogues:
                rogue.kill()
        refused = _auth_failures(client) - before
    sent = sum(r["sent"]["zmq"] + r["sent"]["grpc"] for r in reports)
    aborts = [a for r in reports for a in r["aborts"]]
    print(f"\nrogue: {sent} forged frames and {len(aborts)} aborts sent to {len(decode_workers)} decode workers; "
          f"{refused} refused and counted")
    assert set(aborts) == {"UNAUTHENTICATED"}, aborts
    assert [a.token_ids for a in answers] == expected
    assert not any(a.usage.kv_recomputed for a in answers), "a real transfer failed under the rogue's frames"
    zmq_sent = sum(r["sent"]["zmq"] for r in reports)
    assert refused >= zmq_sent + len(aborts), (refused, zmq_sent, len(aborts))
