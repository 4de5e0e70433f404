"""The edge's view in Redis: which devices are denied, which keys are valid, and the channel that
announces every change.

Layout (all keys under ``{gk}:``, a hash tag: one Redis Cluster slot holds them all):

- ``{gk}:blocked`` / ``{gk}:disabled``: sets of ``"<tenant> <device>"`` members (neither a tenant
  nor a device id may contain a space, so the member splits unambiguously);
- ``{gk}:shadow``: the same, for devices blocked in shadow mode (forwarded, counted
  ``shadow_blocked``); a device is in at most one of ``{gk}:blocked`` and ``{gk}:shadow``. A proxy
  older than shadow blocks never reads this set and ignores the ``shadow`` event: it forwards a
  shadow-blocked device uncounted, which is what a shadow block does to traffic;
- ``{gk}:keys``: hash from a key's hex digest to
  ``"<tenant> <kind> <device or -> <expires epoch or ->"``;
- ``{gk}:events``: pub/sub channel (sharded, SPUBLISH/SSUBSCRIBE, on a cluster); each message is
  one :class:`EdgeEvent` encoded by :func:`encode`;
- ``{gk}:batch:<id>``: a list of encoded events announced together by one ``batch <key>`` event (a
  bulk change: one message on the channel however many devices it touches); it expires after
  :data:`BATCH_TTL_SECONDS`, and a reader that finds it gone reloads in full.

Postgres is the truth; this module only mirrors it. Writers (the store) change the set and then
publish; readers (the proxy's mirror) subscribe first, then load, so no change falls between.

A shadow block is announced as ``unblock`` then ``shadow`` (one MULTI/EXEC): an older proxy lifts
an enforced block it held, a current one ends with the device shadow-blocked. ``unblock`` clears
either mode; ``block`` (enforce) replaces a shadow block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gatekeeper.types import DeviceKey

__all__ = [
    "BATCH_PREFIX",
    "BATCH_TTL_SECONDS",
    "BLOCKED_SET",
    "BUILT_KEY",
    "CHANNEL",
    "DISABLED_SET",
    "HASH_TAG",
    "KEYS_HASH",
    "LEGACY_KEYS",
    "SHADOW_SET",
    "EdgeEvent",
    "KeyGrant",
    "decode",
    "encode",
    "member",
    "split_member",
]

# Every name starts with the hash tag ``{gk}``: on a Redis Cluster they all hash to one slot, so
# a MULTI/EXEC may change several sets and announce the change (SPUBLISH on the channel, which
# hashes like a key) atomically, and a reconcile may RENAME a staging copy over a set.
HASH_TAG = "{gk}"
BLOCKED_SET = f"{HASH_TAG}:blocked"
DISABLED_SET = f"{HASH_TAG}:disabled"
SHADOW_SET = f"{HASH_TAG}:shadow"
KEYS_HASH = f"{HASH_TAG}:keys"
CHANNEL = f"{HASH_TAG}:events"
BATCH_PREFIX = f"{HASH_TAG}:batch:"
# The names before issue 15 (no hash tag). Nothing reads them; they are left in place on an
# upgrade so that a proxy of the old version keeps denying from them until it is replaced
# (docs/decisions.md, "Redis Cluster and Sentinel").
LEGACY_KEYS = ("gk:blocked", "gk:disabled", "gk:shadow", "gk:keys")
# Set by every full rebuild of the view (the admin's reconcile) and never removed: while it is
# missing and the previous version's keys are present, the view under ``{gk}`` has not been
# built yet (proxies upgraded before the admin API), and a mirror that loaded it would forward
# every device the old keys deny. The mirror refuses to load then: not ready, fail closed.
BUILT_KEY = HASH_TAG + ":built"
# Far longer than any subscriber takes to read a batch it was told of; a subscriber that missed
# the announcement reloads in full on reconnect anyway.
BATCH_TTL_SECONDS = 600

EventKind = Literal["block", "shadow", "unblock", "disable", "enable", "revoke", "resync", "batch"]
_KINDS: frozenset[str] = frozenset(
    {"block", "shadow", "unblock", "disable", "enable", "revoke", "resync", "batch"}
)


def member(tenant_id: str, device_id: str) -> str:
    return f"{tenant_id} {device_id}"


def split_member(value: str) -> DeviceKey:
    tenant_id, _, device_id = value.partition(" ")
    return tenant_id, device_id


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """One change of the edge view. ``subject`` is a member for devices, a hex digest for keys."""

    kind: EventKind
    subject: str = ""


def encode(event: EdgeEvent) -> str:
    return f"{event.kind} {event.subject}" if event.subject else event.kind


def decode(message: str) -> EdgeEvent | None:
    """Parse a channel message; None for anything this version does not understand."""
    kind, _, subject = message.partition(" ")
    if kind not in _KINDS:
        return None
    return EdgeEvent(kind, subject)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a valid secret grants at the edge: a tenant, and a device for device keys."""

    tenant_id: str
    kind: Literal["device", "pat"]
    device_id: str | None
    expires_at: float | None  # epoch seconds

    def encode(self) -> str:
        expires = "-" if self.expires_at is None else f"{self.expires_at:.3f}"
        return f"{self.tenant_id} {self.kind} {self.device_id or '-'} {expires}"

    @classmethod
    def decode(cls, value: str) -> KeyGrant | None:
        parts = value.split(" ")
        if len(parts) != 4 or parts[1] not in ("device", "pat"):
            return None
        tenant_id, kind, device_id, expires = parts
        return cls(
            tenant_id,
            kind,  # type: ignore[arg-type]
            None if device_id == "-" else device_id,
            None if expires == "-" else float(expires),
        )
