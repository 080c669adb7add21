"""The multi-host harness's plan, without building anything: names, addresses, commands, parsing."""

from __future__ import annotations

import json

import pytest

from hosts import RAY_PORT, HostPlan, LinkBytes, free_subnet, parse_netns_list, read_link_bytes


def test_hosts_get_their_own_namespace_address_and_link_in_the_subnet():
    plan = HostPlan(7)
    assert [(h.role, h.namespace, h.address, h.link) for h in plan.hosts] == [
        ("head", "pdmh7-h1", "10.88.7.1", "pdmh7-1"),
        ("prefill", "pdmh7-h2", "10.88.7.2", "pdmh7-2"),
        ("decode", "pdmh7-h3", "10.88.7.3", "pdmh7-3")]
    assert (plan.bridge, plan.bridge_address, plan.ray_address) == ("pdmh7-br", "10.88.7.254", f"10.88.7.1:{RAY_PORT}")
    assert len({plan.temp_dir(h) for h in plan.hosts}) == 3


def test_every_interface_name_fits_linux_limit():
    plan = HostPlan(255, ("head",) + ("decode",) * 252)
    names = [plan.bridge] + [n for h in plan.hosts for n in (h.link, f"{h.link}p")]
    assert max(map(len, names)) <= 15


@pytest.mark.parametrize("subnet, roles", [(256, ("head",)), (-1, ("head",)), (0, ()), (0, ("prefill", "head")),
                                           (0, ("head", "head")), (0, ("head", "router"))])
def test_bad_plans_are_refused(subnet, roles):
    with pytest.raises(ValueError):
        HostPlan(subnet, roles)


def test_network_uses_only_the_subnet_and_adds_no_route_out():
    commands = HostPlan(3).network_commands()
    assert all(c[0] == "ip" for c in commands)
    addresses = [c[c.index("add") + 1] for c in commands if "addr" in c]
    assert addresses == ["10.88.3.254/24", "10.88.3.1/24", "10.88.3.2/24", "10.88.3.3/24"]
    assert not any("route" in c for c in commands)
    assert ["ip", "-n", "pdmh3-h2", "link", "set", "lo", "up"] in commands


def test_ray_head_and_nodes_start_with_their_tier_resources():
    plan = HostPlan(0)
    head, prefill, decode = (plan.ray_start_command(h, ray="ray") for h in plan.hosts)
    assert head[:6] == ["ray", "start", "--head", "--port", str(RAY_PORT), "--include-dashboard=false"]
    assert _flag(head, "--node-ip-address") == "10.88.0.1" and json.loads(_flag(head, "--resources")) == {}
    for command, tier, address in ((prefill, "prefill", "10.88.0.2"), (decode, "decode", "10.88.0.3")):
        assert command[:4] == ["ray", "start", "--address", "10.88.0.1:6390"]
        assert _flag(command, "--node-ip-address") == address
        assert json.loads(_flag(command, "--resources")) == {tier: 1}
        assert "--disable-usage-stats" in command and "--head" not in command
    assert len({_flag(c, "--temp-dir") for c in (head, prefill, decode)}) == 3


def test_pdserve_joins_the_head_and_serves_on_its_address(tmp_path):
    from orchestrator.config import load_config

    plan = HostPlan(0)
    command = plan.serve_command(tmp_path / "c.yaml", tmp_path / "ready.json", pdserve="pdserve")
    assert command[:2] == ["pdserve", "up"]
    assert (_flag(command, "--address"), _flag(command, "--host")) == ("10.88.0.1:6390", "10.88.0.1")
    assert (_flag(command, "--grpc-port"), _flag(command, "--http-port")) == ("0", "0")
    (tmp_path / "c.yaml").write_text(json.dumps(plan.config("/models/m")))
    config = load_config(tmp_path / "c.yaml", {"ray_address": plan.ray_address, "server.host": "10.88.0.1"})
    assert (config.pools.num_prefill, config.pools.num_decode, config.kv.host) == (1, 1, "auto")
    assert config.ray_address == "10.88.0.1:6390" and config.model.name == "/models/m"


def test_host_environment_carries_the_token_and_binds_each_worker_host_to_a_core(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "elsewhere:6379")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    plan = HostPlan(0)
    head, prefill, decode = (plan.host_env(h, tmp_path / "token", num_cores=2) for h in plan.hosts)
    for env in (head, prefill, decode):
        assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"]) == ("token", str(tmp_path / "token"))
        assert "RAY_ADDRESS" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env
    assert "VLLM_CPU_OMP_THREADS_BIND" not in head
    assert (prefill["VLLM_CPU_OMP_THREADS_BIND"], decode["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", "1")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in plan.host_env(plan.host("decode"), tmp_path / "token", num_cores=1)


def test_free_subnet_skips_routed_bridged_named_and_held_ones():
    routes = ("default via 192.0.2.1 dev eth0\n10.88.0.0/24 dev pdmh0-br proto kernel scope link src 10.88.0.254\n"
              "local 10.88.4.254 dev x table local\n10.88.2.0/24 dev other scope link\n")
    links = "12: pdmh1-br: <BROADCAST,MULTICAST,UP> mtu 1500\n13: pdmh1-1@if2: <BROADCAST> master pdmh1-br\n"
    namespaces = "pdmh3-h1 (id: 0)\npdmh3-h2\n"
    assert free_subnet(routes, links, namespaces, held={4}) == 5
    assert free_subnet("", "", "", held=set()) == 0


def test_netns_list_is_filtered_to_the_instance():
    text = "pdmh0-h1 (id: 2)\npdmh0-h12\npdmh01-h1 (id: 1)\npdmh1-h1\nother\npdmh0-probe-3\n"
    assert parse_netns_list(text, 0) == ["pdmh0-h1", "pdmh0-h12"]


def test_link_bytes_are_the_hosts_view_of_the_root_side_counters(tmp_path):
    statistics = tmp_path / "pdmh0-2" / "statistics"
    statistics.mkdir(parents=True)
    (statistics / "rx_bytes").write_text("1000\n")
    (statistics / "tx_bytes").write_text("250\n")
    counted = read_link_bytes("pdmh0-2", sys_class_net=tmp_path)
    assert counted == LinkBytes(sent=1000, received=250)
    assert counted - LinkBytes(sent=400, received=50) == LinkBytes(sent=600, received=200)


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]
