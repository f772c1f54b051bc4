"""The emulated API gateway through the real SDK: the signing date check, the access key's
lockout after repeated failed signatures, and the throttling windows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from huaweicloudsdkcbr.v1 import ListVaultRequest
from huaweicloudsdkcore.exceptions import exceptions

from daemon.emulator import Emulator
from tests.emulator.emulator_support import RawClient

Factory = Callable[..., Any]


def refusal(call: Callable[[], Any]) -> exceptions.ClientRequestException:
    with pytest.raises(exceptions.ClientRequestException) as refused:
        call()
    return refused.value


def test_a_signing_date_15_minutes_off_is_refused(emulator: Emulator, cbr: Factory) -> None:
    client = cbr()
    emulator.set_gateway({"clock_offset_seconds": 14 * 60})
    assert client.list_vault(ListVaultRequest()).vaults, "14 minutes off: accepted"
    emulator.set_gateway({"clock_offset_seconds": 16 * 60})
    refused = refusal(lambda: client.list_vault(ListVaultRequest()))
    assert (refused.status_code, refused.error_code) == (401, "APIGW.0301")
    assert "signature expired" in refused.error_msg
    assert "server time:" in refused.error_msg


def test_more_than_five_failed_signatures_lock_the_key_for_five_minutes(
    emulator: Emulator, cbr: Factory
) -> None:
    wrong, right = cbr(sk="not-the-secret"), cbr()
    for _ in range(5):
        assert refusal(lambda: wrong.list_vault(ListVaultRequest())).status_code == 401
    assert right.list_vault(ListVaultRequest()) is not None, "five failures are tolerated"
    for _ in range(6):
        refusal(lambda: wrong.list_vault(ListVaultRequest()))
    locked = refusal(lambda: right.list_vault(ListVaultRequest()))
    assert locked.status_code == 401
    assert "AK access failed to reach the limit" in locked.error_msg
    emulator.advance(301)
    assert right.list_vault(ListVaultRequest()) is not None


@pytest.mark.parametrize(("prefix", "retry_after"), [("APIGW", False), ("APIG", True)])
def test_a_used_up_window_is_refused_until_the_next(
    emulator: Emulator, raw: RawClient, prefix: str, retry_after: bool
) -> None:
    """Raw requests: the SDK's transport retry would hide a GET's 429 body."""
    emulator.set_gateway(
        {
            "throttle_limit": 3,
            "throttle_window_seconds": 60,
            "retry_after": retry_after,
            "prefix": prefix,
        }
    )
    emulator.advance(60 - emulator.world.clock.now() % 60)  # the start of a window
    target = f"/v3/{emulator.project_id('cn-north-4')}/vaults"
    assert [raw.request("GET", target)[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = raw.request("GET", target)
    answer = json.loads(body)
    assert (status, answer["error_code"]) == (429, f"{prefix}.0308")
    assert "policy user over ratelimit,limit:3,time:1 minute" in answer["error_msg"]
    assert ("Retry-After" in headers) is retry_after
    emulator.advance(60)
    assert raw.request("GET", target)[0] == 200
