"""Several hosts on one machine: network namespaces on a bridge, a Ray cluster across them, pdserve on the head.

    cluster = MultiHost.claim()                  # the first free 10.88.K.0/24 (K = 0 on a quiet machine)
    try:
        endpoints = cluster.up(model_dir)        # {"grpc": "10.88.K.1:PORT", "http": ...} once both workers serve
        cluster.link_bytes(cluster.plan.host("decode"))   # what crossed that host's interface
    finally:
        cluster.down()                           # every process, namespace, link and file it made

    scripts/multihost.sh up | down [K] | status  # the same from a shell (this file's command line)

Life of a multi-host cluster (the README's "Run on several machines", on one machine):
1. Claim: the work dir /tmp/pdmhK (made atomically) names the instance; K is the first subnet with no
   route, bridge or live instance on this machine. A dead owner's leftovers are removed first.
2. Network: bridge pdmhK-br in the root namespace with 10.88.K.254 (so this namespace, where pytest runs,
   reaches the hosts); per host i a namespace pdmhK-hi whose eth0 (10.88.K.i/24) is a veth pair whose
   other end, pdmhK-i, is on the bridge. No default route: the hosts reach 10.88.K.0/24 and nothing else.
3. Ray, token auth on (a token of this instance's own, `RAY_AUTH_MODE=token` + `RAY_AUTH_TOKEN_PATH`):
   `ray start --head` on host 1, `ray start --address` with the `prefill` / `decode` resource on the
   others, each node with its own temp dir; a worker host's vLLM engine is bound to a core of its own.
4. `pdserve up --address 10.88.K.1:6390 --host 10.88.K.1` on host 1; ready when its ready file appears.
Down undoes it: pdserve gets SIGTERM (it stops its workers and engines), then every process still in a
host's namespace (`ip netns pids`: the Ray nodes) SIGTERM, then SIGKILL; the namespaces (their veths go
with them), the bridge, the work dir. `ray stop` is never used: it kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pdmh"  # of every name this harness gives: namespaces, links, bridge, work dir
RAY_PORT = 6390
OBJECT_STORE_BYTES = 128 << 20  # per Ray node (Ray's minimum is 75 MiB); pdserve moves no objects through it
KV_TIMEOUT_S = 5.0  # a transfer that fails is recomputed after this long (the test then fails on kv_recomputed)
MAX_MODEL_LEN = 2048
KV_CACHE_GIB = 0.25  # per engine, as the integration tests'
READY_TIMEOUT_S = 600.0
RAY_START_TIMEOUT_S = 300.0  # one `ray start` (a loaded 2-core machine has taken 3 minutes)
STOP_TIMEOUT_S = 120.0
KILL_WAIT_S = 10.0
DEFAULT_ROLES = ("head", "prefill", "decode")
WORKER_RESOURCES = {"head": {}, "prefill": {"prefill": 1}, "decode": {"decode": 1}}
VENV_BIN = Path(sys.executable).parent


class HostError(RuntimeError):
    """The hosts could not be built, started or removed; the message names the step and its output."""


# ---- the plan: names, addresses and commands (pure) ------------------------------------------------


@dataclass(frozen=True)
class Host:
    subnet: int
    index: int  # 1-based: the last octet of its address
    role: str  # head | prefill | decode

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.subnet}-h{self.index}"

    @property
    def address(self) -> str:
        return f"10.88.{self.subnet}.{self.index}"

    @property
    def link(self) -> str:
        """The root namespace's end of this host's veth pair, on the bridge (its counters are the host's traffic)."""
        return f"{PREFIX}{self.subnet}-{self.index}"


@dataclass(frozen=True)
class HostPlan:
    subnet: int
    roles: tuple[str, ...] = DEFAULT_ROLES

    def __post_init__(self) -> None:
        if not 0 <= self.subnet <= 255:
            raise ValueError(f"subnet {self.subnet} is not in 0..255 (10.88.K.0/24)")
        if not self.roles or self.roles[0] != "head" or "head" in self.roles[1:] or len(self.roles) > 253:
            raise ValueError(f"roles {self.roles}: one head first, then up to 252 prefill/decode hosts")
        unknown = set(self.roles) - set(WORKER_RESOURCES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}: use head, prefill, decode")

    @property
    def hosts(self) -> list[Host]:
        return [Host(self.subnet, i, role) for i, role in enumerate(self.roles, start=1)]

    def host(self, role: str) -> Host:
        """The first host of `role`."""
        return next(h for h in self.hosts if h.role == role)

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.subnet}-br"

    @property
    def bridge_address(self) -> str:
        return f"10.88.{self.subnet}.254"

    @property
    def work_dir(self) -> Path:
        return Path(f"/tmp/{PREFIX}{self.subnet}")

    @property
    def ray_address(self) -> str:
        return f"{self.host('head').address}:{RAY_PORT}"

    def temp_dir(self, host: Host) -> Path:
        """The Ray node's own temp dir (session files, sockets, logs): no two nodes share one."""
        return self.work_dir / f"h{host.index}"

    def network_commands(self) -> list[list[str]]:
        """The `ip` commands that build the bridge and every host, in order."""
        commands = [["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]]
        for host in self.hosts:
            ns, peer = host.namespace, f"{host.link}p"
            commands += [["ip", "netns", "add", ns],
                         ["ip", "link", "add", host.link, "type", "veth", "peer", "name", peer],
                         ["ip", "link", "set", peer, "netns", ns],
                         ["ip", "-n", ns, "link", "set", peer, "name", "eth0"],
                         ["ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0"],
                         ["ip", "-n", ns, "link", "set", "eth0", "up"],
                         ["ip", "-n", ns, "link", "set", "lo", "up"],  # vLLM and Ray talk to themselves on loopback
                         ["ip", "link", "set", host.link, "master", self.bridge],
                         ["ip", "link", "set", host.link, "up"]]
        return commands

    def ray_start_command(self, host: Host, ray: str = str(VENV_BIN / "ray")) -> list[str]:
        """`ray start` as a host runs it in its namespace: the head, or a node with its tier's resource."""
        common = ["--node-ip-address", host.address, "--num-cpus", "1",
                  "--resources", json.dumps(WORKER_RESOURCES[host.role]), "--temp-dir", str(self.temp_dir(host)),
                  "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
        if host.role == "head":
            return [ray, "start", "--head", "--port", str(RAY_PORT), "--include-dashboard=false", *common]
        return [ray, "start", "--address", self.ray_address, *common]

    def serve_command(self, config_file: Path, ready_file: Path, pdserve: str = str(VENV_BIN / "pdserve")) -> list[str]:
        """`pdserve up` on the head host, joined to the cluster, its APIs on the head's own address."""
        return [pdserve, "up", "--config", str(config_file), "--address", self.ray_address,
                "--host", self.host("head").address, "--grpc-port", "0", "--http-port", "0",
                "--ready-file", str(ready_file)]

    def config(self, model_dir: str) -> dict:
        """The pdserve config of the cluster (`pdserve up --config`; the flags add the addresses and ports)."""
        return {"model": {"name": model_dir, "max_model_len": MAX_MODEL_LEN},
                "engine": {"kv_cache_gib": KV_CACHE_GIB},
                "pools": {"num_prefill": self.roles.count("prefill"), "num_decode": self.roles.count("decode")},
                "kv": {"timeout_s": KV_TIMEOUT_S}}

    def host_env(self, host: Host, token_file: Path, num_cores: int) -> dict[str, str]:
        """The environment of a host's processes: Ray's token, nothing of the caller's Ray/vLLM settings,
        no hub (the hosts reach nothing beyond 10.88.K.0/24 anyway), and on a worker host with a core of
        its own the engine bound to it (each real host has its own cores)."""
        env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "PDSERVE_HOME", "PYTHONPATH")
               if name in os.environ}
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "HF_HUB_OFFLINE": "1",
                    "PYTHONUNBUFFERED": "1"})
        workers = [h for h in self.hosts if h.role != "head"]
        if host in workers and num_cores >= len(workers):
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(workers.index(host))
        return env


def free_subnet(routes: str, links: str, namespaces: str, held: set[int]) -> int:
    """The first K in 0..255 whose 10.88.K.0/24 has no route in `routes` (`ip -4 route` output), no bridge
    pdmhK-br in `links` (`ip -o link`), no namespace pdmhK-hN in `namespaces` (`ip netns list`) and no
    instance in `held`. Raises HostError when none is."""
    routed = {int(m) for m in re.findall(r"^10\.88\.(\d+)\.\d+/\d+", routes, re.MULTILINE)}
    bridged = {int(m) for m in re.findall(rf"\b{PREFIX}(\d+)-br\b", links)}
    named = {int(m) for m in re.findall(rf"^{PREFIX}(\d+)-h\d+\b", namespaces, re.MULTILINE)}
    for subnet in range(256):
        if subnet not in routed | bridged | named | held:
            return subnet
    raise HostError("every 10.88.K.0/24 subnet is in use on this machine")


def parse_netns_list(text: str, subnet: int) -> list[str]:
    """This instance's namespaces in `ip netns list` output ("pdmh0-h1 (id: 3)" lines)."""
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    return [name for name in names if re.fullmatch(rf"{PREFIX}{subnet}-h\d+", name)]


@dataclass(frozen=True)
class LinkBytes:
    """Bytes a host sent and received over its interface."""

    sent: int
    received: int

    def __sub__(self, other: LinkBytes) -> LinkBytes:
        return LinkBytes(self.sent - other.sent, self.received - other.received)


def read_link_bytes(link: str, sys_class_net: Path = Path("/sys/class/net")) -> LinkBytes:
    """A host's traffic, read from the root namespace's end of its veth pair: what that end received
    (rx) the host sent, what it transmitted (tx) the host received."""
    statistics = sys_class_net / link / "statistics"
    return LinkBytes(sent=int((statistics / "rx_bytes").read_text()), received=int((statistics / "tx_bytes").read_text()))


def unavailable_reason() -> str | None:
    """Why the hosts cannot be built here (None: they can). Probes namespace creation for real."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` binary (iproute2)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"network namespaces are not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# ---- the running instance (I/O) --------------------------------------------------------------------


def _run(command: list[str], *, check: bool = True, timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise HostError(f"`{' '.join(command)}` failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _namespace_pids(namespace: str) -> list[int]:
    result = _run(["ip", "netns", "pids", namespace], check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


class MultiHost:
    """One instance of the hosts (a subnet); `up` builds and starts it, `down` removes all of it."""

    def __init__(self, plan: HostPlan, log_dir: Path | None = None) -> None:
        self.plan = plan
        self.log_dir = log_dir  # where the logs are kept after down (None: they go with the work dir)
        self.endpoints: dict | None = None
        self._serving: subprocess.Popen | None = None  # `pdserve up`, when this object started it

    @classmethod
    def claim(cls, roles: tuple[str, ...] = DEFAULT_ROLES, *, owner_pid: int | None = None,
              log_dir: Path | None = None) -> MultiHost:
        """Take the first free subnet: its work dir is made here, atomically, with the owner's pid in it
        (None: held until `down`, as the command line's are). A dead owner's instance is removed first."""
        for _ in range(256):
            held = {int(p.name.removeprefix(PREFIX)) for p in Path("/tmp").glob(f"{PREFIX}*") if p.name.removeprefix(PREFIX).isdigit()}
            for subnet in sorted(held):
                if _stale(HostPlan(subnet)):
                    MultiHost(HostPlan(subnet)).down()
                    held.discard(subnet)
            routes = _run(["ip", "-4", "route", "show", "table", "all"]).stdout
            links = _run(["ip", "-o", "link"]).stdout
            namespaces = _run(["ip", "netns", "list"]).stdout
            plan = HostPlan(free_subnet(routes, links, namespaces, held), roles)
            try:
                plan.work_dir.mkdir()
            except FileExistsError:
                continue  # another harness took it meanwhile
            (plan.work_dir / "state.json").write_text(json.dumps({"owner_pid": owner_pid, "roles": list(roles)}))
            return cls(plan, log_dir)
        raise HostError("could not claim a subnet")

    def up(self, model_dir: str) -> dict:
        """Build the network, start Ray on every host and pdserve on the head; returns `pdserve up`'s
        endpoints once every worker is ready. On failure everything is removed and HostError raised."""
        try:
            for command in self.plan.network_commands():
                _run(command)
            token_file = self.plan.work_dir / "ray_auth_token"
            token_file.write_text(os.urandom(32).hex())
            token_file.chmod(0o600)
            for host in self.plan.hosts:
                self._start_ray(host, token_file)
            self.endpoints = self._serve(model_dir, token_file)
            return self.endpoints
        except BaseException:
            self.down()
            raise

    def _start_ray(self, host: Host, token_file: Path) -> None:
        env = self.plan.host_env(host, token_file, os.cpu_count() or 1)
        log = self.plan.work_dir / f"ray-start-h{host.index}.log"
        with log.open("w") as out:
            result = subprocess.run(["ip", "netns", "exec", host.namespace, *self.plan.ray_start_command(host)],
                                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=RAY_START_TIMEOUT_S, start_new_session=True)
        if result.returncode != 0:
            raise HostError(f"`ray start` on {host.address} ({host.role}) failed: {log.read_text()[-3000:]}")

    def _serve(self, model_dir: str, token_file: Path) -> dict:
        head = self.plan.host("head")
        config_file, ready_file = self.plan.work_dir / "pdserve.yaml", self.plan.work_dir / "ready.json"
        config_file.write_text(json.dumps(self.plan.config(model_dir)))
        log = (self.plan.work_dir / "pdserve-up.log").open("w")
        process = subprocess.Popen(["ip", "netns", "exec", head.namespace, *self.plan.serve_command(config_file, ready_file)],
                                   env=self.plan.host_env(head, token_file, os.cpu_count() or 1), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._serving = process
        self._update_state(serve_pid=process.pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready_file.exists():
            if process.poll() is not None:
                raise HostError(f"pdserve up on {head.address} exited with {process.returncode}: "
                                f"{(self.plan.work_dir / 'pdserve-up.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise HostError(f"pdserve up on {head.address} was not ready in {READY_TIMEOUT_S:.0f} s: "
                                f"{(self.plan.work_dir / 'pdserve-up.log').read_text()[-3000:]}")
            time.sleep(0.5)
        endpoints = json.loads(ready_file.read_text())
        self._update_state(endpoints=endpoints)
        return endpoints

    def _update_state(self, **fields) -> None:
        path = self.plan.work_dir / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**state, **fields}))

    def link_bytes(self, host: Host) -> LinkBytes:
        return read_link_bytes(host.link)

    def down(self) -> None:
        """Remove everything of this instance that exists (safe to call twice, or on a half-built one)."""
        state_file = self.plan.work_dir / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        namespaces = parse_netns_list(_run(["ip", "netns", "list"]).stdout, self.plan.subnet)
        serve_pid = state.get("serve_pid")
        head = self.plan.host("head").namespace
        if serve_pid and head in namespaces and serve_pid in _namespace_pids(head):
            _stop(serve_pid, STOP_TIMEOUT_S)  # pdserve stops its workers and their engines itself
        if self._serving is not None and self._serving.poll() is None:
            self._serving.kill()  # past its stop timeout, or out of its namespace already: reap it below
        if self._serving is not None:
            self._serving.wait()
        for namespace in namespaces:
            _kill_all(namespace)
        self._keep_logs()
        for namespace in namespaces:
            _run(["ip", "netns", "del", namespace])  # its eth0 goes with it, and the veth's other end
        if _run(["ip", "link", "show", self.plan.bridge], check=False).returncode == 0:
            _run(["ip", "link", "del", self.plan.bridge])
        shutil.rmtree(self.plan.work_dir, ignore_errors=True)

    def _keep_logs(self) -> None:
        """Copy the harness's logs and every Ray node's to `log_dir` before the work dir goes."""
        if self.log_dir is None or not self.plan.work_dir.exists():
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for log in self.plan.work_dir.glob("*.log"):
            shutil.copy(log, self.log_dir / log.name)
        for host in self.plan.hosts:
            ray_logs = self.plan.temp_dir(host) / "session_latest" / "logs"
            if ray_logs.is_dir():
                shutil.copytree(ray_logs, self.log_dir / f"ray-h{host.index}", dirs_exist_ok=True)


def _stale(plan: HostPlan) -> bool:
    """An instance whose owner process is gone (an instance without an owner is held until `down`)."""
    try:
        owner = json.loads((plan.work_dir / "state.json").read_text()).get("owner_pid")
    except (OSError, ValueError):
        return False  # being made right now, or not ours to judge
    return owner is not None and not _alive(owner)


def _stop(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)


def _kill_all(namespace: str) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is left after KILL_WAIT_S, until none is."""
    for sig, wait_s in ((signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, KILL_WAIT_S)):
        pids = _namespace_pids(namespace)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait_s
        while any(_alive(pid) for pid in _namespace_pids(namespace)) and time.monotonic() < deadline:
            time.sleep(0.25)
    left = [pid for pid in _namespace_pids(namespace) if _alive(pid)]
    if left:
        raise HostError(f"processes {left} in {namespace} survived SIGKILL")


# ---- command line: scripts/multihost.sh ------------------------------------------------------------


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/multihost.sh", description="Several hosts on one machine (root): "
                                     "network namespaces on a bridge, Ray across them, pdserve on the head host.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the hosts, start Ray on each and pdserve on the head (runs in the background)")
    up.add_argument("--roles", default=",".join(DEFAULT_ROLES), help="host roles in order (default head,prefill,decode)")
    up.add_argument("--model", default=None, help="model directory or catalogue name (default: the default model)")
    down = sub.add_parser("down", help="stop and remove an instance")
    down.add_argument("subnet", type=int, nargs="?", default=0, help="its K in 10.88.K.0/24 (default 0)")
    sub.add_parser("status", help="list the instances on this machine")
    args = parser.parse_args(argv)
    if args.command == "status":
        for state in sorted(Path("/tmp").glob(f"{PREFIX}*/state.json")):
            print(state.parent.name, state.read_text())
        return 0
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if args.command == "down":
        MultiHost(HostPlan(args.subnet)).down()
        print(f"removed 10.88.{args.subnet}.0/24")
        return 0
    from workers.modelstore import DEFAULT_NAME, resolve

    model_dir = str(resolve(args.model or DEFAULT_NAME, pull_missing=args.model is None))
    cluster = MultiHost.claim(tuple(args.roles.split(",")))
    endpoints = cluster.up(model_dir)
    for host in cluster.plan.hosts:
        print(f"{host.role:8} {host.address:14} namespace {host.namespace}  (ip netns exec {host.namespace} ...)")
    print(f"pdserve: gRPC {endpoints['grpc']}, HTTP {endpoints['http']}; Ray {cluster.plan.ray_address}\n"
          f"remove with: scripts/multihost.sh down {cluster.plan.subnet}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main(sys.argv[1:]))
