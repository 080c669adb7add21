"""The multi-host cluster of the `multihost` tests: four network namespaces on a bridge (a head, a prefill and
two decode hosts), a Ray cluster across them with token auth, `pdserve up --address` on the head (see hosts.py).

Started on first use, removed at the end of the session, also when a test fails, on Ctrl-C and on SIGTERM
(turned into KeyboardInterrupt while the cluster is up, so pytest's teardown runs; both are ignored while
the teardown runs); an instance whose pytest was SIGKILLed is removed by the next claim. Skipped, with the reason, where namespaces cannot be
made (not root, no `ip`, not permitted). Its logs (pdserve's, every Ray node's) are kept under pytest's
temp dir: `multihost-logs` in the session's basetemp.

Run the multihost tests in a pytest run of their own (`scripts/test.sh` does): the integration tests'
cluster lives until the end of its session, and both at once would add their memory.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from faults import ROLES
from hosts import MultiHost, unavailable_reason


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def multihost(tmp_path_factory) -> Iterator[MultiHost]:
    """A serving 4-host cluster (1 prefill + 2 decode workers): `multihost.endpoints["grpc"]` on the head host,
    `multihost.plan.host(role)`."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    from workers.modelstore import DEFAULT_NAME, resolve

    model_dir = str(resolve(DEFAULT_NAME, pull_missing=True))
    cluster = MultiHost.claim(ROLES, owner_pid=os.getpid(), log_dir=tmp_path_factory.getbasetemp() / "multihost-logs")
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt), signal.SIGINT: signal.getsignal(signal.SIGINT)}
    try:
        cluster.up(model_dir)
        yield cluster
    finally:
        for signum in previous:  # a second Ctrl-C or SIGTERM must not cut the teardown short (~10-20 s)
            signal.signal(signum, signal.SIG_IGN)
        try:
            cluster.down()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
