"""ServeConfig: the admin token settings (flags and config keys), checked before the server starts."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tollgate.sidecar.config import ConfigError, ServeConfig, load_config


def test_the_admin_token_comes_from_the_flag_or_the_file(tmp_path: Path) -> None:
    assert load_config(None, {"admin_token": "t0k"}).resolved_admin_token() == "t0k"
    token = tmp_path / "token"
    token.write_text("  from-file\n")
    assert load_config(None, {"admin_token_file": str(token)}).resolved_admin_token() == "from-file"
    assert load_config(None, {}).resolved_admin_token() == ""


@pytest.mark.parametrize(("overrides", "message"), [
    ({"admin_token": "a", "admin_token_file": "f"}, "admin_token_file: give admin_token or admin_token_file, not both"),
    ({"admin_token": " a"}, "admin_token: must not start or end with whitespace"),
], ids=["both", "padded"])
def test_bad_admin_token_settings_name_the_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_an_unreadable_or_empty_token_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin_token_file: cannot read .*missing"):
        load_config(None, {"admin_token_file": str(tmp_path / "missing")}).resolved_admin_token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"admin_token_file: .*empty' is empty"):
        load_config(None, {"admin_token_file": str(tmp_path / "empty")}).resolved_admin_token()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tls_cert": "c.pem"}, "tls_cert: give tls_cert and tls_key together"),
    ({"tls_client_ca": "ca.pem"}, "tls_client_ca: needs TLS on the listener"),
    ({"tls_require_client_cert": True}, "tls_require_client_cert: needs TLS on the listener"),
    ({"tls_cert": "c.pem", "tls_key": "k.pem", "tls_require_client_cert": True},
     "tls_require_client_cert: needs tls_client_ca"),
    ({"tls_cert": "c.pem", "tls_key": "k.pem", "tls_client_ca": "ca.pem"}, "tls_client_ca: also set tls_require"),
    ({"tls_cert": "missing.pem", "tls_key": "k.pem"}, "tls_cert: 'missing.pem' is not a readable file"),
    ({"callers": [{"id": "code-reviewer", "agents": ["*"]}]}, r"callers\[0\]\.id: 'code-reviewer' is not a caller"),
    ({"callers": [{"id": "uid:1", "agent": ["*"]}]}, r"callers\[0\]: unknown key 'agent'"),
    ({"callers": [{"id": "uid:1", "agents": "*"}]}, r"callers\[0\]\.agents: must be a list"),
    ({"callers": "[{id: 'uid:1', agents: [a]}, {id: 'uid:1'}]"}, r"callers\[1\]\.id: 'uid:1' is listed twice"),
    ({"token_keys": "."}, "token_keys: needs token_issuer and token_audience"),
    ({"token_issuer": "https://idp"}, "token_keys: required with token_issuer"),
    ({"authzen_listen": "8080"}, "authzen_listen: must be HOST:PORT"),
    ({"admin_identities": ["alice"]}, "admin_identities: 'alice' is not a caller identity"),
], ids=["cert-without-key", "ca-without-tls", "require-without-tls", "require-without-ca", "ca-without-require",
        "missing-file", "caller-id", "caller-key", "caller-list", "caller-twice-flag", "token-iss-aud",
        "token-keys", "authzen-listen", "admin-identity"])
def test_bad_tls_and_identity_settings_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"reservation_ttl": 0}, "reservation_ttl: must be greater than 0 seconds"),
    ({"budget_line": 0}, "budget_line: must be 1 or more"),
    ({"budget_line_wait": 0}, "budget_line_wait: must be above 0 and at most 600 seconds, not 0"),
    ({"budget_line_wait": float("nan")}, "budget_line_wait: must be above 0 and at most 600 seconds, not nan"),
    ({"budget_line_wait": 601}, "budget_line_wait: must be above 0 and at most 600 seconds, not 601"),
], ids=["ttl-zero", "line-zero", "wait-zero", "wait-nan", "wait-long"])
def test_bad_budget_settings_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_budget_line_waits_budget_line_wait_not_the_store_timeout() -> None:
    from tollgate.sidecar.state import _line

    line = _line(load_config(None, {"budget_line_wait": 7, "state_store_timeout": 1}))
    assert (line.max_waiting, line.max_wait) == (256, 7)


def test_admin_identities_from_a_flag_are_comma_separated() -> None:
    config = load_config(None, {"admin_identities": "uid:0, spiffe://acme/ops/oncall"})
    assert config.admin_identity_list() == ["uid:0", "spiffe://acme/ops/oncall"]


def test_the_readme_table_of_serve_flags_names_every_configuration_key() -> None:
    from tests.readme import readme_section

    table = readme_section("Running the sidecar")
    missing = [f.name for f in fields(ServeConfig) if f"`--{f.name.replace('_', '-')}`" not in table]
    assert missing == [], f"README, Running the sidecar: no row for {missing}"


def test_max_depth_stops_where_a_record_can_still_be_read_back() -> None:
    assert load_config(None, {"max_depth": 31}).max_depth == 31
    with pytest.raises(ConfigError, match=r"max_depth: must be 1 to 31, not 32 \(a deeper request's record could "
                                          r"not be read back"):
        load_config(None, {"max_depth": 32})
