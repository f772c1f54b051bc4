"""The SDK's own log records reach the daemon's log as JSON lines, redacted, however late its
clients are built: the SDK turns propagation off on each client's logger as it builds it."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from daemon.adapters import logs
from daemon.core.errors import CloudError
from daemon.emulator import Emulator
from tests.adapter.test_fidelity import SOURCE, make_cloud, scenario


def test_a_connection_reset_is_logged_as_json_not_as_a_bare_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    logs.configure_logging("json", "info", stream=stream)
    emulator = Emulator(scenario(), clock="manual")
    emulator.start()
    try:
        cloud = make_cloud(emulator, read_attempts=1)  # its SDK clients built from here on
        emulator.set_faults({"reset_after_rate": 1.0})
        with pytest.raises(CloudError):
            cloud.show_backup(SOURCE, emulator.project_id(SOURCE), emulator.backup_id("web-0"))
    finally:
        emulator.stop()
        logs.reset_logging()
    lines = stream.getvalue().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line JSON
    assert any(
        record.get("logger", "").startswith("HuaweiCloud-SDK")
        and "ConnectionException occurred" in record["event"]
        for record in records
    ), "the SDK's record went through the daemon's log"
    assert "ConnectionException" not in capsys.readouterr().err, "nothing by logging's last resort"
