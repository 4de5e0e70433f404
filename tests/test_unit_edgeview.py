"""gatekeeper.domain.edgeview without Redis: the codecs of the edge view round-trip, and what a
newer or broken writer might send is read as "unknown", never as something else."""

from __future__ import annotations

from typing import get_args

import pytest

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent, KeyGrant


@pytest.mark.parametrize(("tenant", "device"), [("acme", "d1"), ("t", "!~#%"), ("a.b", "x" * 128)])
def test_a_member_round_trips(tenant: str, device: str) -> None:
    assert edgeview.split_member(edgeview.member(tenant, device)) == (tenant, device)


@pytest.mark.parametrize("kind", get_args(edgeview.EventKind))
def test_every_event_kind_round_trips(kind: edgeview.EventKind) -> None:
    for subject in ("", "acme d1", "ab" * 32):
        event = EdgeEvent(kind, subject)
        assert edgeview.decode(edgeview.encode(event)) == event


def test_an_event_without_a_subject_is_its_kind_alone() -> None:
    assert edgeview.encode(EdgeEvent("resync")) == "resync"


@pytest.mark.parametrize("message", ["", "explode acme d1", "BLOCK acme d1", " block"])
def test_an_unknown_event_is_none(message: str) -> None:
    assert edgeview.decode(message) is None


@pytest.mark.parametrize(
    "grant",
    [
        KeyGrant("acme", "device", "d1", None),
        KeyGrant("acme", "device", "d1", 1_900_000_000.125),
        KeyGrant("acme", "pat", None, None),
        KeyGrant("acme", "pat", None, 1_900_000_000.0),
    ],
)
def test_a_key_grant_round_trips(grant: KeyGrant) -> None:
    assert KeyGrant.decode(grant.encode()) == grant


def test_a_grant_expiry_is_kept_to_the_millisecond() -> None:
    decoded = KeyGrant.decode(KeyGrant("t", "pat", None, 1_900_000_000.12345).encode())
    assert decoded is not None and decoded.expires_at == 1_900_000_000.123


@pytest.mark.parametrize("value", ["", "acme device d1", "acme admin - -", "a b c d e"])
def test_a_grant_of_an_unknown_shape_is_none(value: str) -> None:
    assert KeyGrant.decode(value) is None


def test_the_layout_names_are_distinct_and_share_one_hash_tag() -> None:
    """One tag, so one cluster slot: a transaction may span every name (issue 15)."""
    names = [
        edgeview.BLOCKED_SET,
        edgeview.DISABLED_SET,
        edgeview.SHADOW_SET,
        edgeview.KEYS_HASH,
        edgeview.CHANNEL,
        edgeview.BATCH_PREFIX + "x",
    ]
    assert len(set(names)) == 6
    # The cluster hashes the text between the first "{" and the next "}" when that is not empty.
    assert {name[name.index("{") + 1 : name.index("}")] for name in names} == {"gk"}
    assert all(name.index("{") == 0 for name in names)
