"""The per-device token bucket (gatekeeper.edge.ratelimit) on a clock that moves only when told:
burst then steady rate, the retry time, per-tenant rates, each worker's share, bounded memory."""

from __future__ import annotations

import pytest

from gatekeeper.edge.ratelimit import DeviceRateLimiter, RateLimit, device_limiter, retry_after
from gatekeeper.settings import Settings, SettingsError
from gatekeeper.types import ManualClock


def _limiter(
    rate: float = 10.0,
    burst: int = 5,
    *,
    tenants: dict[str, float] | None = None,
    max_devices: int = 100_000,
    workers: int = 1,
) -> tuple[DeviceRateLimiter, ManualClock]:
    clock = ManualClock()
    limiter = device_limiter(
        Settings(
            device_rate_limit_per_second=rate,
            device_rate_limit_burst=burst,
            device_rate_limit_tenants=tenants or {},
            device_rate_limit_max_devices=max_devices,
            workers=workers,
        ),
        clock,
    )
    assert limiter is not None
    return limiter, clock


def _admitted_over(
    limiter: DeviceRateLimiter,
    clock: ManualClock,
    seconds: float,
    step: float,
    key: tuple[str, str],
) -> int:
    """Requests admitted when one arrives every ``step`` seconds for ``seconds``."""
    admitted = 0
    for _ in range(round(seconds / step)):
        admitted += limiter.admit(key) == 0.0
        clock.advance(step)
    return admitted


def test_burst_then_steady_rate_within_five_percent() -> None:
    limiter, clock = _limiter(rate=10.0, burst=5)
    key = ("acme", "dev-1")
    burst = sum(limiter.admit(key) == 0.0 for _ in range(50))  # 50 at one instant
    assert burst == 5
    # Then far more than the rate, one request a millisecond, for 100 s: 10 per second pass.
    steady = _admitted_over(limiter, clock, 100.0, 0.001, key)
    assert abs(steady - 1000) <= 50, steady
    # An unrelated device has its own full bucket.
    assert sum(limiter.admit(("acme", "dev-2")) == 0.0 for _ in range(50)) == 5


def test_a_refusal_says_when_a_token_is_back_and_spends_nothing() -> None:
    limiter, clock = _limiter(rate=2.0, burst=2)
    key = ("acme", "dev-1")
    assert limiter.admit(key) == 0.0 and limiter.admit(key) == 0.0
    wait = limiter.admit(key)
    assert wait == pytest.approx(0.5)
    assert limiter.admit(key) == pytest.approx(0.5)  # refusing again did not push it later
    clock.advance(0.499)
    assert limiter.admit(key) > 0.0
    clock.advance(0.002)
    assert limiter.admit(key) == 0.0


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after(0.001) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.2) == 2
    limiter, _ = _limiter(rate=0.1, burst=1)  # a token every 10 s
    key = ("acme", "slow")
    assert limiter.admit(key) == 0.0
    assert retry_after(limiter.admit(key)) == 10


def test_burst_zero_is_one_second_of_the_rate() -> None:
    limiter, _ = _limiter(rate=7.5, burst=0)
    key = ("acme", "dev")
    assert sum(limiter.admit(key) == 0.0 for _ in range(20)) == 8


def test_a_tenant_rate_overrides_the_default_and_zero_exempts() -> None:
    limiter, clock = _limiter(rate=1.0, burst=1, tenants={"fast": 50.0, "free": 0.0})
    assert sum(limiter.admit(("other", "d")) == 0.0 for _ in range(10)) == 1
    assert sum(limiter.admit(("free", "d")) == 0.0 for _ in range(1000)) == 1000
    assert limiter.admit(("fast", "d")) == 0.0
    steady = _admitted_over(limiter, clock, 10.0, 0.001, ("fast", "d"))
    assert abs(steady - 500) <= 25, steady
    # The same device id in two tenants is two devices.
    assert limiter.admit(("other", "d")) == 0.0


def test_only_tenant_overrides_limit_only_those_tenants() -> None:
    limiter = device_limiter(Settings(device_rate_limit_tenants={"acme": 1.0}))
    assert limiter is not None
    assert limiter.limit_for("acme") is not None and limiter.limit_for("other") is None
    assert sum(limiter.admit(("other", "d")) == 0.0 for _ in range(100)) == 100
    assert len(limiter) == 0  # no bucket for a device without a limit


def test_off_by_default_there_is_no_limiter() -> None:
    assert device_limiter(Settings()) is None
    assert device_limiter(Settings(device_rate_limit_tenants={"acme": 0.0})) is None


def test_each_worker_gets_its_share() -> None:
    share = RateLimit.share(10.0, 5, 2)
    assert share is not None and share.rate == 5.0 and share.burst == 3  # 5/2 rounded up
    one = RateLimit.share(3.0, 1, 4)
    assert one is not None and one.burst == 1 and one.rate == 0.75  # never below one token
    limiter, clock = _limiter(rate=10.0, burst=4, workers=2)
    key = ("acme", "d")
    assert sum(limiter.admit(key) == 0.0 for _ in range(10)) == 2
    steady = _admitted_over(limiter, clock, 100.0, 0.001, key)
    assert abs(steady - 500) <= 25, steady


def test_buckets_stay_under_the_cap_for_a_million_devices() -> None:
    cap = 10_000
    limiter, clock = _limiter(rate=1.0, burst=1, max_devices=cap)
    largest = 0
    for i in range(1_000_000):
        # 1M distinct ids, each within its 1 s window: no bucket is idle, all are forgotten
        # by age, and every new id is still admitted (the limit fails open, never closed).
        assert limiter.admit(("acme", f"dev-{i}")) == 0.0
        largest = max(largest, len(limiter))
        if i % 1000 == 0:
            clock.advance(0.0001)
    assert largest <= cap
    assert limiter.forgotten >= 1_000_000 - cap


def test_idle_buckets_expire() -> None:
    limiter, clock = _limiter(rate=1.0, burst=10, max_devices=1000)
    for i in range(1000):
        assert limiter.admit(("acme", f"dev-{i}")) == 0.0
    assert len(limiter) == 1000
    clock.advance(0.5)  # each bucket is half a second from full: none may be dropped yet
    assert limiter.admit(("acme", "new-1")) == 0.0
    assert len(limiter) < 1000 and limiter.forgotten > 0  # at the cap: the oldest made room
    clock.advance(60.0)  # every bucket full again, and a periodic sweep due
    assert limiter.admit(("acme", "new-2")) == 0.0
    assert len(limiter) == 1 and limiter.forgotten < 1000


def test_full_buckets_go_before_any_is_forgotten() -> None:
    limiter, clock = _limiter(rate=1.0, burst=1, max_devices=100)
    for i in range(100):
        limiter.admit(("acme", f"old-{i}"))
    clock.advance(2.0)  # every old bucket is full again
    limiter.admit(("acme", "new"))
    assert len(limiter) == 1 and limiter.forgotten == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"device_rate_limit_per_second": -1.0}, "device_rate_limit_per_second"),
        ({"device_rate_limit_burst": -1}, "device_rate_limit_burst"),
        ({"device_rate_limit_max_devices": 0}, "device_rate_limit_max_devices"),
        ({"device_rate_limit_tenants": {"acme": -2.0}}, "acme"),
        ({"device_rate_limit_tenants": {"acme": True}}, "acme"),
        ({"device_rate_limit_tenants": {"bad tenant": 1.0}}, "bad tenant"),
    ],
)
def test_bad_rate_limit_settings_are_refused(values: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        Settings.from_mapping(values)


def test_tenant_rates_come_from_json_in_the_environment() -> None:
    loaded = Settings.load(
        environ={
            "GATEKEEPER_DEVICE_RATE_LIMIT_TENANTS": '{"acme": 50, "beta": 0.5}',
            "GATEKEEPER_DEVICE_RATE_LIMIT_PER_SECOND": "2.5",
            "GATEKEEPER_DEVICE_RATE_LIMIT_BURST": "4",
        }
    )
    assert loaded.device_rate_limit_tenants == {"acme": 50.0, "beta": 0.5}
    assert loaded.device_rate_limit_per_second == 2.5 and loaded.device_rate_limit_burst == 4
    with pytest.raises(SettingsError, match="device_rate_limit_tenants"):
        Settings.load(environ={"GATEKEEPER_DEVICE_RATE_LIMIT_TENANTS": "[1, 2]"})
    # Workers get their settings as JSON: the table survives the trip.
    assert Settings.from_mapping(loaded.to_mapping()) == loaded
