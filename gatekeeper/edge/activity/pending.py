"""What one device did since the last flush, as the recorder coalesces it and the flush writes it.

Its own module so that the recorder (which fills it) and the SQL (which reads it) both import it
and neither imports the other.
"""

from __future__ import annotations

from gatekeeper.domain.identity import Attributes

__all__ = ["PendingDevice", "WireDevice", "merge_attributes"]

# What travels to the recorder process for one device: tenant, device, news, first seen, last
# active, last upload, and the sightings ((seen at, attributes), oldest first).
WireDevice = tuple[str, str, bool, float, float, float | None, list[tuple[float, Attributes]]]


def merge_attributes(new: Attributes, old: Attributes) -> Attributes:
    """A header left out of a request means "unchanged", not "cleared"."""
    return (
        new[0] or old[0],
        new[1] or old[1],
        new[2] or old[2],
        new[3] or old[3],
        new[4] or old[4],
        new[5] or old[5],
    )


class PendingDevice:
    """What one device did since the last flush."""

    __slots__ = ("attributes", "changes", "first_seen", "last_active", "last_upload", "news")

    def __init__(self, attributes: Attributes, seen: float, upload: bool, news: bool) -> None:
        self.attributes = attributes
        # Anything beyond "still active": first sighting here, an attribute change, an upload.
        self.news = news
        # (seen at, attributes) for the first sighting in this batch and each change after it.
        self.changes: list[tuple[float, Attributes]] = [(seen, attributes)]
        self.first_seen = seen
        self.last_active = seen
        self.last_upload = seen if upload else None

    def absorb(self, newer: PendingDevice) -> None:
        """Merge activity recorded after this entry (used when a failed batch goes back)."""
        self.last_active = max(self.last_active, newer.last_active)
        if newer.last_upload is not None:
            self.last_upload = max(self.last_upload or 0.0, newer.last_upload)
        self.changes.extend(newer.changes)
        self.attributes = merge_attributes(newer.attributes, self.attributes)
        self.news = self.news or newer.news

    def combine(self, other: PendingDevice) -> None:
        """Merge what another worker saw of the same device, whichever saw it first: the
        sightings are put in request-time order and the attributes follow the latest."""
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_active = max(self.last_active, other.last_active)
        if other.last_upload is not None:
            self.last_upload = max(self.last_upload or 0.0, other.last_upload)
        self.news = self.news or other.news
        changes = sorted([*self.changes, *other.changes], key=_seen_at)
        state = changes[0][1]
        for _, attributes in changes[1:]:
            state = merge_attributes(attributes, state)
        self.changes = changes
        self.attributes = state

    def to_wire(self, tenant: str, device: str) -> WireDevice:
        return (
            tenant,
            device,
            self.news,
            self.first_seen,
            self.last_active,
            self.last_upload,
            self.changes,
        )

    @classmethod
    def from_wire(cls, wire: WireDevice) -> PendingDevice:
        _, _, news, first_seen, last_active, last_upload, changes = wire
        entry = cls.__new__(cls)
        entry.news = news
        entry.first_seen = first_seen
        entry.last_active = last_active
        entry.last_upload = last_upload
        entry.changes = changes
        entry.attributes = changes[-1][1]
        return entry


def _seen_at(change: tuple[float, Attributes]) -> float:
    return change[0]
