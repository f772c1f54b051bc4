"""A run killed with SIGKILL mid-sweep (docs/design.md §13, T1) must not block the next one.

The sweep lease outlives any read with its retries (5 minutes); before the fix a process
killed while holding it left every later run refusing the policy as "leased" until then.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from daemon.app import instance_id, owner_gone
from tests.engine.harness import Deployment, policy

WEB_SOUTH = policy("web-south", ["web-prod"], "cn-south-1", "web-dr")


def test_a_run_killed_holding_the_sweep_lease_does_not_block_the_next_run(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy([WEB_SOUTH])
    killed = deployment.cli("--run-once", env={"CBR_REPLICATOR_TEST_CRASH_AT": "after_claim"})
    assert killed.returncode == -signal.SIGKILL
    assert deployment.replicate_calls() == []

    after = deployment.cli("--run-once")

    assert "leased" not in after.stdout + after.stderr
    assert "policy web-south: ok" in after.stdout
    # The killed run's claims still hold their (30 s) job leases: nothing is posted yet.
    assert deployment.replicate_calls() == []


def test_owner_gone_only_for_a_local_process_that_no_longer_runs() -> None:
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert owner_gone(f"{host}:{dead.pid}:1700000000")
    assert not owner_gone(instance_id())  # this very process
    assert not owner_gone(f"{host}:{os.getppid()}:1700000000")  # alive
    assert not owner_gone(f"other-{host}:{dead.pid}:1700000000")  # another host: unknown
    assert not owner_gone("a")
    assert not owner_gone(f"{host}:not-a-pid:1")
