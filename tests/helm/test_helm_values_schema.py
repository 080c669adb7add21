"""values.schema.json: generated from the config tree, up to date, and refusing bad values clearly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from helmchart import CHART, EXAMPLES, NAMESPACE, ROOT, find_object, rendered, run_helm, template_args
from orchestrator.config import PdserveConfig, load_config

pytestmark = pytest.mark.helm

SCHEMA_PATH = CHART / "values.schema.json"
GENERATOR = ROOT / "scripts" / "gen_values_schema.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_values_schema", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def values_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def walk(node: Any, path: str = "$"):
    """Every sub-schema with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_committed_schema_is_not_stale():
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_check_reports_a_stale_schema(tmp_path):
    stale = tmp_path / "values.schema.json"
    stale.write_text("{}\n")
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check", "--output", str(stale)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "is stale: regenerate it with `python scripts/gen_values_schema.py`" in proc.stderr


# Kubernetes objects passed through whole: their keys are checked when the render is validated.
PASS_THROUGH = {"$.properties.head.properties.extraVolumes.items"}


def test_schema_is_self_contained_and_refuses_unknown_keys_everywhere():
    for path, node in walk(values_schema()):
        assert "$ref" not in node and "$defs" not in node and "$id" not in node, path
        if "properties" in node and path not in PASS_THROUGH:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def _assert_mirrors(model: type[BaseModel], schema: dict[str, Any], path: str) -> None:
    assert set(schema["properties"]) == set(model.model_fields), path
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _assert_mirrors(annotation, schema["properties"][name], f"{path}.{name}")


def test_pdserve_key_mirrors_the_config_tree():
    _assert_mirrors(PdserveConfig, values_schema()["properties"]["pdserve"], "pdserve")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit_s: float | None = Field(None, gt=0, description="A limit.")


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner = Field(default_factory=_Inner, description="A nested section.")
    by_name: dict[str, _Inner] = Field(default_factory=dict)


def test_generator_inlines_nested_models_and_nullable_fields():
    """A section added to the config tree tomorrow comes out inlined, strict and nullable-typed."""
    generator = load_generator()
    raw = _Outer.model_json_schema()
    defs = raw.pop("$defs")
    schema = generator._clean(generator._inline(raw, defs, seen=()))
    inner = schema["properties"]["inner"]
    assert inner["description"] == "A nested section."
    assert inner["additionalProperties"] is False
    assert inner["properties"]["limit_s"]["type"] == ["number", "null"]
    assert inner["properties"]["limit_s"]["exclusiveMinimum"] == 0
    assert schema["properties"]["by_name"]["additionalProperties"]["additionalProperties"] is False
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors({"inner": {"limit_s": None}, "by_name": {"a": {"limit_s": 2}}}))
    assert list(validator.iter_errors({"inner": {"limit_s": -1}}))
    assert list(validator.iter_errors({"inner": {"typo": 1}}))


def _merge(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@pytest.mark.parametrize("values_file", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.stem)
def test_shipped_values_meet_the_schema(values_file):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    _merge(values, yaml.safe_load(values_file.read_text()))
    errors = list(jsonschema.Draft7Validator(values_schema()).iter_errors(values))
    assert not errors, [e.message for e in errors]


# Each bad value, where Helm's refusal must point, and the words it must hold. Helm 3 (gojsonschema)
# and Helm >= 3.18 / 4 (santhosh-tekuri/jsonschema) phrase them differently; both name the key.
BAD_VALUES = {
    "negative replicas": (
        "prefill.replicas=-1", ("prefill.replicas", "/prefill/replicas"), ("0",),
    ),
    "negative max replicas": (
        "decode.maxReplicas=-3", ("decode.maxReplicas", "/decode/maxReplicas"), ("0",),
    ),
    "unknown top-level key": ("replica=3", ("(root)", "at ''"), ("replica",)),
    "unknown chart key": ("prefill.gpu=1", ("prefill", "/prefill"), ("gpu",)),
    "unknown config key": (
        "pdserve.engine.tensor_paralel_size=2", ("pdserve.engine", "/pdserve/engine"), ("tensor_paralel_size",),
    ),
    "GPU count of letters": ("decode.gpus=two", ("decode.gpus", "/decode/gpus"), ("integer",)),
    "config value out of range": (
        "pdserve.engine.gpu_memory_utilization=2",
        ("pdserve.engine.gpu_memory_utilization", "/pdserve/engine/gpu_memory_utilization"), ("1",),
    ),
    "config enum": (
        "pdserve.model.dtype=int3", ("pdserve.model.dtype", "/pdserve/model/dtype"), ("bfloat16",),
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
@pytest.mark.parametrize("command", ["template", "lint"])
def test_helm_refuses_bad_values_with_a_clear_message(helm, case, command):
    setting, where, words = BAD_VALUES[case]
    args = template_args(sets=(setting,)) if command == "template" else ["lint", str(CHART), "--set", setting]
    result = run_helm(helm, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"helm {command} accepted {setting}"
    assert "values don't meet the specifications of the schema" in output, output
    assert any(w in output for w in where), output
    assert all(w in output for w in words), output


def test_the_schema_itself_refuses_a_gpu_count_of_letters():
    """Whatever the Helm version: the schema says a GPU count is an integer."""
    errors = list(jsonschema.Draft7Validator(values_schema()).iter_errors({"prefill": {"gpus": "abc"}}))
    assert [e.message for e in errors] == ["'abc' is not of type 'integer'"]


@pytest.mark.parametrize(("sets", "message"), [
    (("prefill.minReplicas=5",), "prefill.minReplicas (5) is above prefill.maxReplicas (4)"),
    (("decode.replicas=9",), "decode.replicas (9) must lie within decode.minReplicas..maxReplicas (1..4)"),
    (("pdserve.server.host=127.0.0.1",), "the APIs would be unreachable from the Services"),
    (("decode.replicas=0", "decode.minReplicas=0"), "decode.replicas must be at least 1"),
])
def test_inconsistent_values_fail_with_an_actionable_message(render, sets, message):
    result = render(sets=sets)
    assert result.returncode != 0
    assert message in result.stderr


def _load_rendered_config(objects: list[dict], tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(find_object(objects, "ConfigMap", "-config")["data"]["config.yaml"])
    return load_config(path)


@pytest.mark.parametrize("values_files", [(), *[(str(p),) for p in EXAMPLES]],
                         ids=["default", *[p.stem for p in EXAMPLES]])
def test_configmap_holds_a_config_pdserve_loads(render, values_files, tmp_path):
    objects = rendered(render(*values_files))
    config = _load_rendered_config(objects, tmp_path)
    cluster = find_object(objects, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert config.pools.num_prefill == groups["prefill"]["replicas"]
    assert config.pools.num_decode == groups["decode"]["replicas"]
    assert config.server.host == "0.0.0.0"
    target = config.planner.kubernetes
    assert (target.namespace, target.raycluster_name) == (NAMESPACE, cluster["metadata"]["name"])
    assert set(groups) == {target.prefill_group, target.decode_group}
    for tier in ("prefill", "decode"):
        limits = config.planner.tier(tier)
        assert (limits.min_replicas, limits.max_replicas) == (groups[tier]["minReplicas"], groups[tier]["maxReplicas"])
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert (ports["grpc"], ports["http"]) == (config.server.grpc_port, config.server.http_port)


def test_config_values_reach_the_configmap(render, tmp_path):
    result = render(sets=("pdserve.pools.num_decode=3", "decode.replicas=2"),
                    set_json=("pdserve.router.prefix_weight=0.25",))
    config = _load_rendered_config(rendered(result), tmp_path)
    assert config.router.prefix_weight == 0.25
    assert config.pools.num_decode == 3  # set explicitly: the chart leaves it alone
