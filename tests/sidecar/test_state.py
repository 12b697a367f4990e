"""The sidecar's state store: the settings that choose it, checked before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.sidecar.config import ConfigError, load_config

PG = "postgresql://tollgate@db.internal:5432/tollgate"


def test_the_default_state_store_is_sqlite_in_the_data_dir() -> None:
    config = load_config(None, {})
    assert (config.state_store, config.state_store_timeout, config.state_store_migrate) == ("", 2.0, False)
    assert (config.kill_switch_max_staleness, config.kill_switch_refresh) == (5.0, 1.0)
    assert config.state_store_max_connections == 10


def test_a_postgresql_url_passes_with_its_libpq_parameters() -> None:
    url = f"{PG}?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert load_config(None, {"state_store": url, "state_store_migrate": True}).state_store == url
    assert load_config(None, {"state_store": "postgres://u@h/db"}).state_store == "postgres://u@h/db"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"state_store": "sqlite:///tmp/state.db"}, r"state_store: must be \"\" \(SQLite in data_dir\) or a postgresql://"),
    ({"state_store": "/var/lib/tollgate/state.db"}, "state_store: must be"),
    ({"state_store_migrate": True}, "state_store_migrate: needs a postgresql:// state_store"),
    ({"state_store_password_file": "pw"}, "state_store_password_file: needs a postgresql:// state_store"),
    ({"state_store": PG, "state_store_password_file": "/nonexistent/pw"},
     "state_store_password_file: '/nonexistent/pw' is not a readable file"),
    ({"state_store": PG, "state_store_timeout": 0.0}, "state_store_timeout: must be above 0"),
    ({"state_store": PG, "state_store_timeout": float("nan")}, "state_store_timeout: must be above 0"),
    ({"state_store": PG, "state_store_timeout": float("inf")}, "state_store_timeout: .* at most 60"),
    ({"state_store_max_connections": 0}, "state_store_max_connections: must be 1 or more"),
    ({"kill_switch_max_staleness": float("inf")}, "kill_switch_max_staleness: must be above 0 and at most"),
    ({"kill_switch_max_staleness": -1.0}, "kill_switch_max_staleness: must be above 0"),
    ({"kill_switch_refresh": 5.0}, "kill_switch_refresh: must be above 0 and below kill_switch_max_staleness"),
    ({"kill_switch_refresh": 0.0}, "kill_switch_refresh: must be above 0"),
], ids=["sqlite-url", "path", "migrate-without-pg", "password-without-pg", "password-missing", "timeout-zero",
        "timeout-nan", "timeout-inf", "connections", "staleness-inf", "staleness-negative", "refresh-at-bound",
        "refresh-zero"])
def test_bad_state_store_settings_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_refused_state_store_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"state_store": "mysql://tollgate:s3cret-pw@db/tollgate"})
    assert "s3cret-pw" not in str(caught.value)
    assert "tollgate:***@db" in str(caught.value)


def test_the_state_store_keys_come_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "tollgate.yaml").write_text(
        f"state_store: {PG}\nstate-store-timeout: 0.5\nstate_store_password_file: {tmp_path / 'pw'}\n"
        "kill_switch_max_staleness: 3\nkill_switch_refresh: 0.25\nstate_store_max_connections: 4\n")
    config = load_config(str(tmp_path / "tollgate.yaml"), {})
    assert (config.state_store, config.state_store_timeout, config.kill_switch_max_staleness) == (PG, 0.5, 3.0)
    assert (config.kill_switch_refresh, config.state_store_max_connections) == (0.25, 4)
