"""The request-target rules of gatekeeper.edge.admission, as pure functions (no servers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.edge.admission import AdmissionError, normalise_path, parse_target


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/api/acme/x", "/api/acme/x"),
        ("/api//acme///x", "/api/acme/x"),
        ("/api/./acme/x/.", "/api/acme/x/"),
        ("/api/x/../acme/x", "/api/acme/x"),
        ("/../../api/acme", "/api/acme"),
        ("/a/b/..", "/a/"),
        ("/%61%70%69/%7E%2d%5f", "/api/~-_"),
        ("/a/%3a%2b", "/a/%3A%2B"),
        ("/a/%2e%2E/b", "/b"),
        ("/.well-known/x", "/.well-known/x"),
        ("/", "/"),
    ],
)
def test_normal_form(path: str, normal: str) -> None:
    assert normalise_path(path) == normal


@pytest.mark.parametrize(
    "path",
    [
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/a/%252e%252e/b",
        "/a/%252F",
        "/a/..;/b",
        "/a/.;x/b",
        "/a/%2e%2e;/b",
        "/a/%zz",
        "/a/%4",
    ],
)
def test_paths_without_one_reading_are_refused(path: str) -> None:
    with pytest.raises(AdmissionError) as refused:
        normalise_path(path)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("method", "raw", "origin", "authority"),
    [
        ("GET", "http://h/api/a?q=1", "/api/a?q=1", "h"),
        ("GET", "HTTPS://h:8443", "/", "h:8443"),
        ("GET", "http://h?q", "/?q", "h"),
        ("OPTIONS", "*", "*", None),
        ("GET", "/a/../b?x=/../", "/b?x=/../", None),
    ],
)
def test_targets_become_origin_form(
    method: str, raw: str, origin: str, authority: str | None
) -> None:
    target = parse_target(method, raw)
    assert (target.origin_form, target.authority) == (origin, authority)


@pytest.mark.parametrize("raw", ["*", "h:80", "ftp://h/x", "http:///x", "http://u@h/x", "/a#b"])
def test_other_targets_are_refused(raw: str) -> None:
    with pytest.raises(AdmissionError):
        parse_target("GET", raw)


segment = st.sampled_from(["a", "B", "", ".", "..", "%2e", "%41", "x;y", "%7e"])


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(segment, max_size=8))
def test_normalising_twice_changes_nothing(segments: list[str]) -> None:
    once = normalise_path("/" + "/".join(segments))
    assert normalise_path(once) == once
    assert "//" not in once and "/./" not in once and "/../" not in once
