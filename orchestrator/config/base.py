"""The base every config section derives from: frozen, unknown keys refused."""

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """A frozen pydantic model that refuses unknown keys (a typo in YAML is an error, not a no-op)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
