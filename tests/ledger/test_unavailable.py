"""A database that does not answer is "try again later" (exit 75, which systemd's
``RestartPreventExitStatus=78`` leaves to ``Restart=on-failure``), not a config error (78):
at start, and when a connection is killed in the middle of a ``--run-once``. A database
that answers "no" (no such database) stays a config error."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from daemon.adapters import logs as observe
from daemon.adapters.ledger import open_ledger
from daemon.adapters.ledger.failures import database_unavailable
from daemon.cli.entry import main
from daemon.core import exitcodes
from daemon.core.errors import LedgerError, LedgerUnavailableError
from tests.engine.harness import Deployment, deploy, policy, rules_scenario
from tests.postgres_support import POSTGRES_ADMIN, dsn
from tests.service.support import Service, service, web_south

__all__ = ["deploy", "service"]  # fixtures


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``main`` configures logging onto this test's captured stderr: undo it after."""
    yield
    observe.reset_logging()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/cbr"


def test_opening_a_database_that_does_not_answer_is_unavailable() -> None:
    with pytest.raises(LedgerUnavailableError, match="did not answer"):
        open_ledger(unreachable_url())


def test_a_database_that_refuses_is_a_config_error() -> None:
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + "/cbr_no_such_database"
    with pytest.raises(LedgerError) as refused:
        open_ledger(url)
    assert not isinstance(refused.value, LedgerUnavailableError)
    assert "does not exist" in str(refused.value)


@pytest.mark.parametrize(
    ("state", "message", "unavailable"),
    [
        ("57P01", "terminating connection due to administrator command", True),
        ("40P01", "deadlock detected", True),
        ("55P03", "could not obtain lock", True),
        ("57014", "canceling statement due to statement timeout", True),
        ("53300", "too many connections", True),
        ("28P01", "password authentication failed", False),
        ("42P01", "relation does not exist", False),
        (None, "connection failed: Connection refused", True),
        (None, 'connection failed: FATAL:  database "x" does not exist', False),
        (None, "connection failed: FATAL:  the database system is starting up", True),
    ],
)
def test_postgresql_errors_are_told_apart(
    state: str | None, message: str, unavailable: bool
) -> None:
    cause = psycopg.OperationalError(message)
    if state is not None:
        cause = type("Coded", (psycopg.OperationalError,), {"sqlstate": state})(message)
    error = OperationalError("SELECT 1", {}, cause)
    assert database_unavailable(error) is unavailable


def test_a_locked_sqlite_ledger_is_unavailable_not_corrupt() -> None:
    error = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
    assert database_unavailable(error)


def emulator_config(path: Path, ledger_url: str) -> Path:
    import yaml

    document = {
        "ledger": {"url": ledger_url},
        "cloud": {"provider": "emulator"},
        "policies": [policy("web", ["web-prod"], "cn-south-1", "web-dr")],
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("command", [["status"], ["--run-once"], ["history"]])
def test_commands_exit_75_when_the_database_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = emulator_config(tmp_path / "config.yaml", unreachable_url())
    assert main(["-c", str(config), *command]) == exitcodes.UNAVAILABLE
    err = capsys.readouterr().err
    assert "did not answer" in err
    assert "ledger: ledger" not in err


def test_the_daemon_exits_75_when_the_database_does_not_answer(service: Service) -> None:
    service.write_config([web_south("1s")], ledger={"url": unreachable_url()})
    daemon = service.start()
    assert daemon.wait() == exitcodes.UNAVAILABLE
    assert "did not answer" in daemon.output


@pytest.fixture
def kill_on_first_job_insert() -> Iterator[list[int]]:
    """Terminates the backend of the connection about to write the first jobs row, as a
    failover or an operator's pg_terminate_backend would: the killed pids are recorded."""
    killed: list[int] = []

    def kill(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if killed or "INSERT INTO jobs" not in statement:
            return
        pid = connection.connection.dbapi_connection.info.backend_pid
        with psycopg.connect(dsn(POSTGRES_ADMIN), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        killed.append(pid)

    event.listen(Engine, "before_cursor_execute", kill)
    try:
        yield killed
    finally:
        event.remove(Engine, "before_cursor_execute", kill)


@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_a_connection_killed_in_the_middle_of_run_once_exits_75(
    deploy: Callable[..., Deployment],
    kill_on_first_job_insert: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    deployment = deploy([policy("web", ["web-prod"], "cn-south-1", "web-dr")], rules_scenario())
    code = main(["-c", str(deployment.config), "--run-once"])
    err = capsys.readouterr().err
    assert kill_on_first_job_insert, "no jobs row was written"
    assert code == exitcodes.UNAVAILABLE, err
    assert "did not answer" in err
    assert "ledger: ledger" not in err
