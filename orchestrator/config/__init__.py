"""The one config tree of pdserve.

Every section is a frozen pydantic model that refuses unknown keys. The tree is loaded from YAML
(`load_config`), overridden from the CLI (`with_overrides`), and mirrored by the Helm values schema
(`config_json_schema`). Defaults are written once, here. May import only pydantic and yaml.
"""

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from orchestrator.config.base import ConfigModel
from orchestrator.config.budget import BudgetConfig
from orchestrator.config.planner import PlannerConfig
from orchestrator.config.server import ServerConfig
from orchestrator.config.tracing import TracingConfig
from orchestrator.config.serving import (
    DEFAULT_MODEL,
    EngineConfig,
    KVTransferConfig,
    ModelConfig,
    PoolsConfig,
    RouterConfig,
)
from orchestrator.errors import ConfigError


class PdserveConfig(ConfigModel):
    """The whole configuration of a pdserve cluster."""

    ray_address: str | None = Field(None, description="Ray cluster to join; unset: start an embedded local one.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    kv: KVTransferConfig = Field(default_factory=KVTransferConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _check_stall_after_kv_timeout(self) -> "PdserveConfig":
        # A decode engine legitimately waits up to kv.timeout_s for a transfer before it recomputes.
        if self.pools.engine_stall_timeout_s <= self.kv.timeout_s:
            raise ValueError(f"pools.engine_stall_timeout_s ({self.pools.engine_stall_timeout_s:g}) must exceed "
                             f"kv.timeout_s ({self.kv.timeout_s:g}): a decode engine waits that long for a transfer")
        return self


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines))


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> PdserveConfig:
    """Load the config from a YAML file (or defaults when None), then apply dotted overrides.

    Raises ConfigError with every problem listed by its dotted key.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return PdserveConfig.model_validate(data)
    except ValidationError as err:
        raise _explain(err, source if not overrides else f"{source} with command-line overrides") from None


def with_overrides(config: PdserveConfig, overrides: dict[str, Any]) -> PdserveConfig:
    """Return a copy of `config` with dotted keys (`pools.num_decode`) replaced, validated again."""
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    try:
        return PdserveConfig.model_validate(data)
    except ValidationError as err:
        raise _explain(err, "command-line overrides") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config tree (the source of the Helm chart's values schema)."""
    return PdserveConfig.model_json_schema()


__all__ = [
    "DEFAULT_MODEL",
    "BudgetConfig",
    "ConfigModel",
    "EngineConfig",
    "KVTransferConfig",
    "ModelConfig",
    "PdserveConfig",
    "PlannerConfig",
    "PoolsConfig",
    "RouterConfig",
    "ServerConfig",
    "TracingConfig",
    "config_json_schema",
    "load_config",
    "with_overrides",
]
