"""The forms of ``redis_url``: one server, a cluster, a Sentinel service; and the errors."""

from __future__ import annotations

import pytest

from gatekeeper.redis_url import parse_redis_url
from gatekeeper.settings import Settings, SettingsError, mask_url


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "rediss://:pw@cache:6380/1", "unix:///run/valkey.sock"]
)
def test_one_server_urls_pass_through_unchanged(url: str) -> None:
    target = parse_redis_url(url)
    assert (target.topology, target.url, target.nodes) == ("single", url, ())


def test_a_cluster_url_lists_its_seed_nodes_and_credentials() -> None:
    target = parse_redis_url("rediss+cluster://gk:p%40ss@10.0.0.1:7000,[::1]:7001")
    assert target.topology == "cluster"
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert (target.username, target.password, target.tls) == ("gk", "p@ss", True)
    assert "p@ss" not in repr(target)


def test_a_sentinel_url_names_its_sentinels_and_service() -> None:
    target = parse_redis_url("redis+sentinel://:secret@s1:26379,s2:26379,s3:26379/gk-primary")
    assert target.topology == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("s3", 26379))
    assert (target.service, target.password, target.tls) == ("gk-primary", "secret", False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "unknown scheme 'http'"),
        ("cache:6379", "unknown scheme"),
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster://a:7000,b", "'b' is not host:port"),
        ("redis+cluster://a:7000,b:0", "'b:0' is not host:port"),
        ("redis+cluster://a:99999", "is not host:port"),
        ("redis+cluster://a:7000/3", "database 0 only"),
        ("redis+cluster://a:7000?ssl=1", "no query string"),
        ("redis+sentinel://s1:26379", "service name as its path"),
        ("redis+sentinel://s1:26379/a/b", "service name as its path"),
        ("redis+sentinel://[::1:26379/x", "cannot parse"),
    ],
)
def test_a_malformed_url_is_a_settings_error(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_redis_url(url)
    with pytest.raises(SettingsError, match=message):
        Settings(redis_url=url)


def test_the_error_never_echoes_the_password() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(redis_url="redis+cluster://:hunter2@a:7000,b")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis+cluster://:pw@a:7000,b:7001", "redis+cluster://:***@a:7000,b:7001"),
        ("rediss+cluster://gk:pw@a:7000", "rediss+cluster://gk:***@a:7000"),
        (
            "redis+sentinel://:pw@s1:26379,s2:26379/svc",
            "redis+sentinel://:***@s1:26379,s2:26379/svc",
        ),
        ("redis+sentinel://s1:26379/svc", "redis+sentinel://s1:26379/svc"),
    ],
)
def test_mask_url_hides_passwords_of_the_new_forms(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "pw" not in repr(Settings(redis_url=url)).replace("***", "")
