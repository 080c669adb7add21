"""API keys -> tenants, for both servers.

Keys come from `ServerConfig.api_keys_file` (YAML or JSON) and/or the environment variable
`PDSERVE_API_KEYS` ("key1=tenantA,key2=tenantB"); both are merged. With no key configured auth is off
and every request belongs to the tenant `default`. With keys, every request must carry one
(`authorization: Bearer KEY` as gRPC metadata or the HTTP header), else `Unauthenticated`.

Accepted file shapes:
    {"keys": {"sk-abc": "team-a", "sk-def": "team-b"}}      # or the mapping at the top level
    {"keys": [{"key": "sk-abc", "tenant": "team-a"}, ...]}  # a list of entries

Keys are secrets: they never appear in a log line, an error message or a repr.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError, Unauthenticated

ENV_VAR = "PDSERVE_API_KEYS"
DEFAULT_TENANT = "default"


class ApiKeys:
    """The key -> tenant table. `tenant_for(authorization)` is the one check both servers call."""

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._keys = dict(keys or {})

    @classmethod
    def load(cls, path: Path | str | None = None, env: Mapping[str, str] | None = None) -> ApiKeys:
        """Keys from the file at `path` (if any) merged with `PDSERVE_API_KEYS` from `env` (os.environ).

        Raises ConfigError when the file cannot be read or parsed, or a key maps to two tenants.
        """
        env = os.environ if env is None else env
        keys: dict[str, str] = {}
        sources = []
        if path is not None:
            sources.append((f"API keys file {path}", _read_file(Path(path))))
        if env.get(ENV_VAR):
            sources.append((f"${ENV_VAR}", _parse_env(env[ENV_VAR])))
        for source, entries in sources:
            for position, (key, tenant) in enumerate(entries, 1):
                if keys.get(key, tenant) != tenant:
                    raise ConfigError(f"{source}: entry {position} gives a key already mapped to another tenant")
                keys[key] = tenant
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._keys.values())

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an `authorization` value ("Bearer KEY"); `default` when auth is off.

        Raises Unauthenticated when keys are configured and the value is missing, malformed or unknown.
        """
        if not self.enabled:
            return DEFAULT_TENANT
        if not authorization:
            raise Unauthenticated("this server requires an API key: send `authorization: Bearer KEY`")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the authorization header must read `Bearer KEY`")
        tenant = self._lookup(key.strip())
        if tenant is None:
            raise Unauthenticated("the API key is not valid")
        return tenant

    def _lookup(self, key: str) -> str | None:
        # Compare against every key in constant time per key, so timing does not reveal a prefix.
        # An HTTP header may hold any bytes (aiohttp hands undecodable ones over as surrogates).
        given = key.encode("utf-8", "surrogatepass")
        found = None
        for known, tenant in self._keys.items():
            if hmac.compare_digest(known.encode("utf-8", "surrogatepass"), given):
                found = tenant
        return found

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys, tenants={sorted(self.tenants)})"


def _parse_env(value: str) -> list[tuple[str, str]]:
    entries = []
    for position, item in enumerate(value.split(","), 1):
        if not item.strip():
            continue
        key, sep, tenant = item.strip().partition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ConfigError(f"${ENV_VAR}: entry {position} must read KEY=TENANT")
        entries.append((key.strip(), tenant.strip()))
    return entries


def _read_file(path: Path) -> list[tuple[str, str]]:
    try:
        loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON: one parser reads both
    except OSError as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        # The parser's message quotes the offending line, which may hold a key: do not repeat it.
        raise ConfigError(f"API keys file {path} is neither valid YAML nor JSON") from None
    if isinstance(loaded, dict) and "keys" in loaded:
        loaded = loaded["keys"]
    return _entries(loaded, path)


def _entries(loaded: Any, path: Path) -> list[tuple[str, str]]:
    if isinstance(loaded, dict):
        items = list(loaded.items())
    elif isinstance(loaded, list):
        items = []
        for position, entry in enumerate(loaded, 1):
            if not isinstance(entry, dict) or set(entry) != {"key", "tenant"}:
                raise ConfigError(f"API keys file {path}: entry {position} must be {{key: ..., tenant: ...}}")
            items.append((entry["key"], entry["tenant"]))
    else:
        raise ConfigError(f"API keys file {path} must hold a mapping of keys to tenants, or a list of entries")
    for position, (key, tenant) in enumerate(items, 1):
        if not isinstance(key, str) or not key or not isinstance(tenant, str) or not tenant:
            raise ConfigError(f"API keys file {path}: entry {position} needs a non-empty string key and tenant")
    return items
