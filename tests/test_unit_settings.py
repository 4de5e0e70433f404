"""gatekeeper.settings without a server: validation, flags over environment over TOML over
defaults, coercion, and a repr that never shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.settings import Settings, SettingsError, check_jwt_secret, mask_url


def test_defaults_are_valid() -> None:
    settings = Settings.load(environ={})
    assert settings == Settings()
    assert settings.tenant_source == "path" and settings.default_tenant == "default"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"proxy_port": 70000}, "proxy_port"),
        ({"metrics_port": -1}, "metrics_port"),
        ({"workers": 0}, "workers"),
        ({"flush_interval_seconds": 0.0}, "flush_interval_seconds"),
        ({"auth_mode": "open"}, "auth_mode"),
        ({"tenant_source": "cookie"}, "tenant_source"),
        ({"underscore_headers": "keep"}, "underscore_headers"),
        ({"upstream": "ftp://up.example"}, "upstream"),
        ({"upstream": "http://"}, "upstream"),
        ({"activity_buffer_max_devices": 10, "flush_max_devices": 20}, "activity_buffer"),
    ],
)
def test_invalid_values_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**changes)  # type: ignore[arg-type]


def test_flags_beat_environment_beat_toml_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "gk.toml"
    config.write_text('proxy_port = 1001\nadmin_port = 1002\nmetrics_port = 1003\nhost = "h"\n')
    environ = {
        "GATEKEEPER_CONFIG": str(config),
        "GATEKEEPER_ADMIN_PORT": "2002",
        "GATEKEEPER_METRICS_PORT": "2003",
    }
    settings = Settings.load({"metrics_port": 3003, "host": None}, environ)
    assert settings.proxy_port == 1001  # TOML
    assert settings.admin_port == 2002  # environment over TOML
    assert settings.metrics_port == 3003  # flag over environment
    assert settings.host == "h"  # a flag of None is "not given"
    assert settings.workers == 1  # default


def test_an_explicit_config_file_wins_over_the_environments(tmp_path: Path) -> None:
    named, other = tmp_path / "named.toml", tmp_path / "other.toml"
    named.write_text("[gatekeeper]\nworkers = 3\n")
    other.write_text("workers = 5\n")
    settings = Settings.load(environ={"GATEKEEPER_CONFIG": str(other)}, config_file=named)
    assert settings.workers == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("workers = ", "cannot read"),
        ("gatekeeper = 1\n", "must be a table"),
        ("nonsense = 1\n", "unknown settings: nonsense"),
        ('workers = "many"\n', "workers"),
    ],
)
def test_a_bad_config_file_is_a_settings_error(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "gk.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=message):
        Settings.load(environ={}, config_file=config)


def test_a_missing_config_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load(environ={"GATEKEEPER_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)]
)
def test_environment_booleans(raw: str, value: bool) -> None:
    assert Settings.load(environ={"GATEKEEPER_FAIL_OPEN": raw}).fail_open is value


def test_environment_values_take_the_defaults_types() -> None:
    settings = Settings.load(
        environ={
            "GATEKEEPER_WORKERS": "4",
            "GATEKEEPER_UPSTREAM_READ_TIMEOUT": "2.5",
            "GATEKEEPER_DATA_DIR": "/var/lib/gk",
            "GATEKEEPER_UNRELATED": "ignored",
        }
    )
    assert settings.workers == 4
    assert settings.upstream_read_timeout == 2.5
    assert settings.data_dir == Path("/var/lib/gk")
    with pytest.raises(SettingsError, match="not a boolean"):
        Settings.load(environ={"GATEKEEPER_FAIL_OPEN": "maybe"})
    with pytest.raises(SettingsError, match="workers"):
        Settings.load(environ={"GATEKEEPER_WORKERS": "four"})


def test_repr_masks_secrets_and_url_passwords() -> None:
    settings = Settings(
        jwt_secret="jwt-secret-value",
        key_pepper="pepper-value",
        database_url="postgresql://gk:pg-password@db:5432/gk",
        redis_url="redis://:redis-password@cache:6379/0",
    )
    text = repr(settings)
    for secret in ("jwt-secret-value", "pepper-value", "pg-password", "redis-password"):
        assert secret not in text
    assert "jwt_secret='***'" in text and "key_pepper='***'" in text
    assert "postgresql://gk:***@db:5432/gk" in text
    assert "jwt_secret=None" in repr(Settings())
    assert mask_url("redis://cache:6379") == "redis://cache:6379"
    assert mask_url(None) is None


def test_to_mapping_round_trips_for_worker_processes() -> None:
    settings = Settings(workers=3, data_dir=Path("/tmp/gk"), jwt_secret="s" * 32)
    mapping = settings.to_mapping()
    assert mapping["data_dir"] == "/tmp/gk"
    assert Settings.from_mapping(mapping) == settings
    assert settings.replace(workers=4).workers == 4 and settings.workers == 3


@pytest.mark.parametrize("tenant", ["ACME", "", "a b", "x" * 65])
def test_a_default_tenant_the_edge_would_refuse_is_a_settings_error(tenant: str) -> None:
    with pytest.raises(SettingsError, match="default_tenant"):
        Settings(default_tenant=tenant)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("CHANGE-ME", "placeholder"),
        ("demo-only-change-me-0123456789abcdef", "placeholder"),
        ("short-secret", "12 bytes; HS256 needs at least 32"),
    ],
)
def test_placeholder_and_short_jwt_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        check_jwt_secret(secret)


def test_a_random_jwt_secret_of_32_bytes_passes() -> None:
    check_jwt_secret("9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c")


def test_keys_outside_the_gatekeeper_table_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gk.toml"
    path.write_text('workers = 4\n\n[gatekeeper]\nproxy_port = 9000\n\n[proxy]\nhost = "x"\n')
    with pytest.raises(SettingsError, match=r"proxy, workers outside the \[gatekeeper\] table"):
        Settings.load(environ={}, config_file=path)
    path.write_text("workers = 4\nproxy_port = 9000\n")  # a flat file is fine
    assert Settings.load(environ={}, config_file=path).workers == 4
