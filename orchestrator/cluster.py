"""Bring a whole pdserve cluster up and down: Ray, the controller, the workers, the gateway, the APIs.

    cluster = await ServingCluster.start(config, model_dir)   # returns once every worker is ready
    print(cluster.servers.grpc_target, cluster.servers.http_url)
    ...
    await cluster.stop()

Life of a cluster (what `pdserve up` runs, and what the integration tests share per session):
1. The API ports are checked first, so a busy port fails in a second, before any engine starts.
2. Ray: joined at `config.ray_address`, or started embedded on this machine with the `prefill` and
   `decode` custom resources the workers are pinned by (`ray.init`, stopped again by `stop()`); the
   embedded one listens on 127.0.0.1 only (`start_embedded_ray`).
3. The controller actor starts the pools (`ClusterController.start`).
4. The gateway (tokenizer, router, budgets) and both API servers start on the caller's event loop.
`stop()` undoes it in reverse: servers (in-flight requests get `server.shutdown_grace_s`), gateway,
controller (stops every worker and its engine process; the workers its checkpoint still lists, should it
have been down, are stopped from here), Ray (when embedded).

The controller is owned by this process and restarted by Ray when it dies alone; the workers are detached
(`orchestrator.recovery`). Should this process die without stopping (SIGKILL): an embedded Ray dies with
it (its reaper stops every process it started, the workers and their engines among them); in a joined
cluster the controller dies with its owner, and each worker stops itself once the controller's name has
been gone for `workers.actor.ORPHAN_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import PdserveConfig
from orchestrator.errors import StartupError

log = logging.getLogger(__name__)

EMBEDDED_RESOURCES = 1024  # of each tier resource on the embedded node: room for any pool size
LOOPBACK = "127.0.0.1"  # the embedded Ray's node IP: every Ray process then listens on loopback only
OBJECT_STORE_BYTES = 256 << 20


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise StartupError naming the flag to change when a port is already in use (0 is always free)."""
    for flag, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"port {port} on {host} is in use: pass {flag} or stop the other server") from None
                raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def model_id(name: str) -> str:
    """The id clients name the model by: the catalogue name, or the directory's name."""
    from workers.modelstore import CATALOG

    return name if name in CATALOG else Path(name).expanduser().name


def start_ray(config: PdserveConfig, *, log_to_driver: bool = False) -> bool:
    """Join or start Ray; True when this call started an embedded cluster (stop it with ray.shutdown)."""
    import ray

    from orchestrator.controller import NAMESPACE

    if ray.is_initialized():
        return False
    if config.ray_address:
        try:
            ray.init(address=config.ray_address, namespace=NAMESPACE, log_to_driver=log_to_driver)
        except ConnectionError as exc:
            raise StartupError(f"cannot join the Ray cluster at {config.ray_address}: {exc}") from None
        return False
    start_embedded_ray(_embedded_cpus(config), log_to_driver=log_to_driver)
    return True


def start_embedded_ray(num_cpus: int, *, log_to_driver: bool = False) -> None:
    """Start a one-machine Ray whose every process listens on 127.0.0.1 only, with the tier resources.

    Ray's processes bind loopback only when the node's IP is exactly 127.0.0.1, and every interface for any
    other node IP: the GCS, the raylet's node and object managers and every core worker (drivers and actors)
    through `GrpcServer(..., listen_to_localhost_only=node_ip == "127.0.0.1")` (`src/ray/rpc/grpc_server.cc`);
    the dashboard agent's gRPC, HTTP and metrics ports, the runtime-env agent, and the metrics servers of the
    autoscaler monitor and of the dashboard head (started even with the dashboard off, for usage stats)
    through `is_localhost(node_ip)` in their Python modules. The dashboard stays off. The integration tests'
    Ray is started here too; a cluster reachable from other machines is joined with `ray_address` instead.
    """
    import ray

    from orchestrator.controller import NAMESPACE

    with _ray_single_node():
        ray.init(_node_ip_address=LOOPBACK, num_cpus=num_cpus, namespace=NAMESPACE,
                 resources={"prefill": EMBEDDED_RESOURCES, "decode": EMBEDDED_RESOURCES}, include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, log_to_driver=log_to_driver, configure_logging=False)


@contextmanager
def _ray_single_node() -> Iterator[None]:
    """Keep Ray from replacing a 127.0.0.1 node IP by the machine's interface address while it starts.

    `ray.init` passes `_node_ip_address` through `services.resolve_ip_for_localhost`, which on Linux turns
    127.0.0.1 into the address other machines would reach (Ray 2.60, `ray/_private/services.py`), unless
    `ray_constants.ENABLE_RAY_CLUSTER` is false: Ray's own single-machine mode (the default on Windows and
    macOS), switched by `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`. The variable is read when Ray is imported, so
    this process's constant is set as well; the processes Ray starts now (raylet, agents, and the workers the
    raylet starts later) inherit the variable. Both are restored afterwards.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def _embedded_cpus(config: PdserveConfig) -> int:
    """Logical CPUs of the embedded node: the cores, or more when the pools reserve more than there are
    (the engines then share cores; Ray would otherwise leave the extra workers pending)."""
    pools, planner = config.pools, config.planner
    most_workers = max(pools.num_prefill + pools.num_decode,
                       (planner.prefill.max_replicas + planner.decode.max_replicas) if planner.enabled else 0)
    return max(os.cpu_count() or 1, int(most_workers * pools.cpus_per_worker + 0.999))


@dataclass
class ServingCluster:
    config: PdserveConfig
    controller: Any
    gateway: Any
    servers: Any
    owns_ray: bool
    controller_name: str  # its actor's name in namespace `pdserve`, and its checkpoint's key

    @classmethod
    async def start(cls, config: PdserveConfig, model_dir: str, *, log_to_driver: bool = False,
                    api_keys: Any = None) -> ServingCluster:
        """Start everything (see the module docstring). Raises StartupError, leaving nothing running."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from orchestrator.controller import CONTROLLER_NAME, NAMESPACE, ControllerActor
        from orchestrator.gateway.service import Gateway
        from orchestrator.gateway.text import PromptTokenizer

        from orchestrator import tracing

        tracing.setup_from_config("pdserve-gateway", config.tracing)
        server = config.server
        check_ports_free(server.host, {"--grpc-port": server.grpc_port, "--http-port": server.http_port})
        owns_ray = start_ray(config, log_to_driver=log_to_driver)
        controller, name = None, f"{CONTROLLER_NAME}-{uuid.uuid4().hex[:6]}"
        try:
            # On this node (the head, where `pdserve up` runs), not wherever Ray finds room: a worker host that
            # is lost or partitioned must not take the controller with it.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            controller = ray.remote(ControllerActor).options(
                name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000, get_if_exists=False, max_restarts=-1,
                scheduling_strategy=here, enable_task_events=False,  # as the workers' (controller._create)
            ).remote(config.model_dump(mode="json"), model_dir, name, _kv_secret(config))
            await _start_controller(controller)
            tokenizer = PromptTokenizer(model_dir, config.model.think_start, config.model.think_end) \
                if config.engine.kind == "vllm" else _timing_tokenizer(config)
            gateway = Gateway(controller, config, tokenizer, model_id(config.model.name), profile=_profile(config))
            await gateway.start()
            servers = await _start_servers(gateway, config, api_keys)
        except BaseException:
            await _teardown(controller, name, owns_ray)
            raise
        return cls(config, controller, gateway, servers, owns_ray, name)

    async def stop(self) -> None:
        await self.servers.stop()
        await self.gateway.stop()
        await _teardown(self.controller, self.controller_name, self.owns_ray)


def _kv_secret(config: PdserveConfig) -> bytes:
    """The cluster's KV secret (`kv.auth_key_file`, or 32 fresh random bytes): the workers get it over Ray."""
    from workers.kv.auth import make_secret

    try:
        return make_secret(config.kv.auth_key_file)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def _start_controller(controller: Any) -> None:
    import ray

    try:
        await controller.start.remote()
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, StartupError):
            raise StartupError(cause.message) from None
        raise StartupError(f"the controller failed to start the pools: {exc}") from None
    except ray.exceptions.RayError as exc:
        raise StartupError(f"the controller failed to start the pools: {exc}") from None


async def _start_servers(gateway: Any, config: PdserveConfig, api_keys: Any) -> Any:
    from orchestrator.api.servers import start_servers

    return await start_servers(gateway, config.server, api_keys=api_keys)


def _profile(config: PdserveConfig) -> Any:
    if config.engine.profile is None:
        return None
    from orchestrator.profiles import EngineProfile

    return EngineProfile.load(config.engine.profile)


def _timing_tokenizer(config: PdserveConfig) -> Any:
    from workers.engine.timing import TimingTokenizer

    return TimingTokenizer(config.model)


async def _teardown(controller: Any, name: str, owns_ray: bool) -> None:
    import ray

    from orchestrator.recovery import stop_leftovers

    if controller is not None:
        try:
            await asyncio.wait_for(controller.shutdown.remote(), 60.0)
        except Exception as exc:  # down or stuck: the workers it left are stopped below
            log.warning("controller shutdown: %s", exc)
        try:
            await stop_leftovers(name)
        except Exception as exc:  # Ray itself is going: its shutdown below takes the processes
            log.warning("stopping the controller's workers: %s", exc)
        ray.kill(controller, no_restart=True)
    if owns_ray:
        ray.shutdown()
