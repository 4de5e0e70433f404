"""Webhook signatures and the SSRF guard: what a receiver verifies, which targets are refused."""

from __future__ import annotations

import pytest

from admin_api.webhook_security import TargetRefused, check_target, new_secret, sign, verify


def test_a_signature_verifies_with_its_secret_only() -> None:
    secret, body = new_secret(), b'{"id":"e1"}'
    header = sign(secret, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify(secret, body, header)
    assert not verify(new_secret(), body, header)
    assert not verify(secret, body + b" ", header)
    assert not verify(secret, body, "t=x,v1=00")
    assert secret not in header


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",  # a name resolving to loopback
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "http:///nohost",
    ],
)
async def test_private_targets_and_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        await check_target(url, allow_private=False)


async def test_private_targets_pass_when_allowed_but_schemes_still_count() -> None:
    await check_target("http://127.0.0.1:8080/hook", allow_private=True)
    await check_target("http://localhost/hook", allow_private=True)
    with pytest.raises(TargetRefused):
        await check_target("file:///etc/passwd", allow_private=True)


async def test_a_public_address_passes() -> None:
    await check_target("https://93.184.216.34/hook", allow_private=False)
