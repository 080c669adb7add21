"""`pdserve up` as a user runs it: it serves, answers `pdserve generate`, listens on 127.0.0.1 only, and
Ctrl-C leaves nothing behind.

One real start (embedded Ray, 1 prefill + 1 decode vLLM-CPU worker, the default model); a second
`up` on the busy ports must fail at once with a message naming the flag to change.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

PDSERVE = [str(Path(sys.executable).with_name("pdserve"))] if Path(sys.executable).with_name("pdserve").exists() \
    else [sys.executable, "-m", "pdserve.cli"]
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 120


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PDSERVE, *args], capture_output=True, text=True, timeout=timeout)


def test_up_on_a_busy_port_fails_at_once_naming_the_flag():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = _run("up", "--grpc-port", str(port), "--http-port", "0")
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--grpc-port" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # refused before any engine started


def test_bad_flags_are_refused_with_usage_exit_code():
    result = _run("up", "--prefill", "-1")
    assert result.returncode == 2
    assert "pools.num_prefill" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_serves_and_ctrl_c_leaves_no_process_behind(tmp_path, stop_signal):
    """Ctrl-C, and SIGTERM (how Kubernetes stops the head pod), stop it the same graceful way: ray.init
    replaces SIGTERM's handler with its own exit, which `pdserve up` takes back once started."""
    ready = tmp_path / "ready.json"
    process = subprocess.Popen([*PDSERVE, "up", "--grpc-port", "0", "--http-port", "0", "--ready-file", str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        endpoints = _wait_ready(process, ready)
        started = _descendants(process.pid)
        assert len(started) >= 4  # Ray's processes, the controller, two workers and their engines
        answer = _run("generate", "The capital of France is", "--target", endpoints["grpc"], "--max-tokens", "8",
                      "--temperature", "0", "--json")
        assert answer.returncode == 0, answer.stderr
        result = json.loads(answer.stdout)
        assert "Paris" in result["text"] and result["usage"]["prefill_worker"] and result["usage"]["decode_worker"]
        listening = _listeners([process.pid] + [pid for pid, _ in _descendants(process.pid)])
        assert any(port == int(endpoints["grpc"].rsplit(":", 1)[1]) for _, _, _, port in listening)  # sees the API
        exposed = [f"{name} (pid {pid}) on {address} port {port}" for pid, name, address, port in listening
                   if not _is_loopback(address)]
        assert not exposed, "listening beyond 127.0.0.1:\n" + "\n".join(exposed)
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:  # failed while serving: Ray's workers have process groups of their own
            for pid in [process.pid] + [pid for pid, _ in _descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped" in stderr
    left = _alive(started)
    assert not left, f"processes left behind: {left}"


def test_loopback_addresses_are_told_apart_from_every_interface():
    assert all(map(_is_loopback, ["127.0.0.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(_is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"]))


def _wait_ready(process: subprocess.Popen, ready: Path) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"pdserve up exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("pdserve up did not become ready in time")
        time.sleep(0.5)
    return json.loads(ready.read_text())


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Every process started under `pid`, and every process in its session (daemons that re-parented)."""
    found = {}
    root = psutil.Process(pid)
    for child in root.children(recursive=True):
        found[child.pid] = _name(child)
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == pid:
                found[proc.pid] = _name(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    found.pop(pid, None)
    return sorted(found.items())


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except psutil.Error:
        return "?"


def _alive(processes: list[tuple[int, str]]) -> list[tuple[int, str]]:
    deadline = time.monotonic() + 30  # the OS reaps asynchronously
    while True:
        alive = [(pid, name) for pid, name in processes if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def _listeners(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, program, address, port) of each TCP socket listening and each unconnected UDP socket of these
    processes (one that exited meanwhile has none)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            program, sockets = _program(proc.cmdline()), proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for sock in sockets:
            if (sock.status == psutil.CONN_LISTEN) if sock.type == socket.SOCK_STREAM else not sock.raddr:
                found.append((pid, program, sock.laddr.ip, sock.laddr.port))
    return found


def _program(cmdline: list[str]) -> str:
    """What a reader recognises: `gcs_server`, `raylet`, `monitor.py`, `pdserve`, `ray::Worker`, `VLLM::Worker`."""
    words = [Path(word).name for word in cmdline if word and not word.startswith("-")]
    if len(words) > 1 and words[0].startswith("python"):
        return words[1][:60]
    return words[0][:60] if words else "?"


def _is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (how gRPC binds 127.0.0.1 on a dual-stack socket)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback
