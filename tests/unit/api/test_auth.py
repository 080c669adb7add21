"""API keys -> tenants: parsing the file and $PDSERVE_API_KEYS, checking headers; keys never leak."""

from __future__ import annotations

import json

import pytest

from orchestrator.api.auth import DEFAULT_TENANT, ENV_VAR, ApiKeys
from orchestrator.errors import ConfigError, Unauthenticated

SECRET_A, SECRET_B = "sk-alpha-0123456789", "sk-bravo-9876543210"


def load_error(path=None, env=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        ApiKeys.load(path, env or {})
    return caught.value


def test_without_keys_auth_is_off_and_everyone_is_default():
    keys = ApiKeys.load(None, {})
    assert not keys.enabled
    assert keys.tenant_for(None) == keys.tenant_for("Bearer anything") == DEFAULT_TENANT


def test_keys_from_the_environment():
    keys = ApiKeys.load(None, {ENV_VAR: f" {SECRET_A}=team-a, {SECRET_B}=team-b ,"})
    assert keys.tenant_for(f"Bearer {SECRET_A}") == "team-a"
    assert keys.tenant_for(f"bearer   {SECRET_B}  ") == "team-b"
    assert keys.tenants == {"team-a", "team-b"}


@pytest.mark.parametrize("text", [
    f"keys:\n  {SECRET_A}: team-a\n",
    f"{SECRET_A}: team-a\n",
    json.dumps({"keys": [{"key": SECRET_A, "tenant": "team-a"}]}),
    json.dumps({SECRET_A: "team-a"}),
])
def test_key_file_shapes(tmp_path, text):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    assert ApiKeys.load(path, {}).tenant_for(f"Bearer {SECRET_A}") == "team-a"


def test_file_and_environment_are_merged(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"{SECRET_A}: team-a\n")
    keys = ApiKeys.load(path, {ENV_VAR: f"{SECRET_B}=team-b,{SECRET_A}=team-a"})
    assert keys.tenants == {"team-a", "team-b"}


@pytest.mark.parametrize("header, wanted", [
    (None, "requires an API key"),
    ("", "requires an API key"),
    (SECRET_A, "must read `Bearer KEY`"),
    (f"Basic {SECRET_A}", "must read `Bearer KEY`"),
    ("Bearer ", "must read `Bearer KEY`"),
    ("Bearer sk-alpha-0123456788", "not valid"),
    (f"Bearer {SECRET_A}x", "not valid"),
    ("Bearer sk-\udcff\udcfe", "not valid"),  # undecodable header bytes, as aiohttp hands them over
])
def test_missing_or_wrong_keys_are_refused_without_echoing_them(header, wanted):
    keys = ApiKeys({SECRET_A: "team-a"})
    with pytest.raises(Unauthenticated) as caught:
        keys.tenant_for(header)
    assert wanted in caught.value.message and caught.value.http_status == 401
    assert "sk-" not in caught.value.message and "sk-" not in str(caught.value)


def test_repr_shows_tenants_never_keys():
    keys = ApiKeys({SECRET_A: "team-a", SECRET_B: "team-b"})
    assert SECRET_A not in repr(keys) and SECRET_B not in repr(keys) and SECRET_A not in str(keys)
    assert "2 keys" in repr(keys) and "team-a" in repr(keys)


def test_a_key_given_to_two_tenants_is_a_config_error_without_the_key(tmp_path):
    error = load_error(None, {ENV_VAR: f"{SECRET_A}=team-a,{SECRET_A}=team-b"})
    assert "entry 2" in error.message and SECRET_A not in error.message
    path = tmp_path / "keys.yaml"
    path.write_text(f"{SECRET_A}: team-a\n")
    error = load_error(path, {ENV_VAR: f"{SECRET_A}=team-b"})
    assert SECRET_A not in error.message


@pytest.mark.parametrize("value", [SECRET_A, f"{SECRET_A}=", f"={SECRET_A}", f"{SECRET_A}=team-a,oops{SECRET_B}"])
def test_a_malformed_environment_entry_names_its_position_only(value):
    error = load_error(None, {ENV_VAR: value})
    assert "KEY=TENANT" in error.message and SECRET_A not in error.message and SECRET_B not in error.message


@pytest.mark.parametrize("text", [
    f"{SECRET_A}: [unclosed\n",            # not YAML: the parser's message would quote the line
    f"- {SECRET_A}\n",                      # a list of bare strings
    json.dumps({"keys": [{"key": SECRET_A}]}),
    json.dumps({SECRET_A: ""}),
    json.dumps({SECRET_A: 5}),
    json.dumps(SECRET_A),
])
def test_a_bad_key_file_never_quotes_a_key(tmp_path, text):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    error = load_error(path)
    assert str(path) in error.message and SECRET_A not in error.message


def test_an_unreadable_key_file(tmp_path):
    error = load_error(tmp_path / "missing.yaml")
    assert "cannot read API keys file" in error.message
