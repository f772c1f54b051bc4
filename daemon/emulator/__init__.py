"""A local Huawei Cloud CBR v3 + IAM v3 emulator (the cloud's side, for tests and the demo).

It imports nothing from the rest of `daemon` and nothing from the SDK: it is written from the
API facts so that it checks our client instead of mirroring it (docs/design.md §7).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from daemon.emulator.auth import Credentials
from daemon.emulator.faults import FaultInjector, base_faults
from daemon.emulator.gateway import Gateway
from daemon.emulator.scenario import (
    ScenarioError,
    State,
    build_state,
    generate_scenario,
    load_scenario,
)
from daemon.emulator.server import EmulatorHTTPServer
from daemon.emulator.world import EDITION_STATUS, Clock, World

__all__ = ["Emulator", "generate_scenario", "main"]


def save_state(path: Path, state: State) -> None:
    """Write the state atomically: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(state, stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Emulator:
    """In-process emulator: `with Emulator(scenario) as emu: client(emu.url) ...`."""

    def __init__(
        self,
        scenario: dict[str, Any] | str | Path,
        *,
        state_file: Path | None = None,
        permissive: bool = False,
        faults: dict[str, Any] | None = None,
        clock: str = "real",
        time_scale: float = 1.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        edition: str | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> None:
        self.tls = tls
        self.state_file = Path(state_file) if state_file is not None else None
        state = self._initial_state(scenario)
        if edition is not None:
            if edition not in EDITION_STATUS:
                raise ValueError(f"edition must be one of {sorted(EDITION_STATUS)}")
            state["settings"]["edition"] = edition
        on_change = self._save if self.state_file is not None else None
        self.world = World(
            state,
            clock=Clock(clock, time_scale),
            permissive=permissive,
            seed=seed,
            on_change=on_change,
        )
        self.faults = FaultInjector(faults, seed=seed)
        self.gateway = Gateway(gateway, clock=self.world.clock.now)
        credentials = state["credentials"]
        self.credentials = Credentials(
            credentials["access_key"], credentials["secret_key"], credentials["domain_id"]
        )
        self._address = (host, port)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if self.state_file is not None and not self.state_file.exists():
            self._save(state)

    def _initial_state(self, scenario: dict[str, Any] | str | Path) -> State:
        if self.state_file is not None and self.state_file.exists():
            loaded: State = json.loads(self.state_file.read_text(encoding="utf-8"))
            return loaded
        return build_state(load_scenario(scenario))

    def _save(self, state: State) -> None:
        if self.state_file is not None:
            save_state(self.state_file, state)

    # ----- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        """Listen (port 0 = any free port) and serve in a daemon thread; return the base URL."""
        server = EmulatorHTTPServer(
            self._address, self.world, self.faults, self.credentials, self.gateway
        )
        if self.tls is not None:
            # HTTPS, for tests of the adapter's certificate checks (verify_tls, ca_bundle).
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
            server.scheme = "https"
        self._server = server
        # A short poll interval keeps stop() fast: tests start and stop many emulators.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="cbr-emulator", daemon=True
        )
        self._thread.start()
        return server.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._server.base_url

    # ----- control -----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.world.advance(seconds)

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        return self._running().log.entries(operation)

    def clear_requests(self) -> None:
        """Forget the logged requests, and the most in flight so far."""
        self._running().log.clear()

    def most_in_flight(self) -> int:
        """The most API requests that were in flight at once (arrived, not yet answered)."""
        return self._running().log.most_in_flight

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.faults.set(faults)

    def set_gateway(self, gateway: dict[str, Any]) -> None:
        """Throttling windows and signing guards (``daemon.emulator.gateway``)."""
        self.gateway.set(gateway)

    def duplicates(self) -> list[dict[str, Any]]:
        return self.world.duplicates()

    def state(self) -> dict[str, Any]:
        """A deep copy of the whole world, caught up with the clock."""
        with self.world.lock:
            self.world.tick()
            copied: dict[str, Any] = json.loads(json.dumps(self.world.state))
            return copied

    def delete_backup(self, backup_id: str) -> bool:
        return self.world.delete_backup(backup_id)

    def add_backup(self, backup: dict[str, Any]) -> dict[str, Any]:
        return self.world.add_backup(backup)

    def _running(self) -> EmulatorHTTPServer:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._server

    # ----- lookups for tests -------------------------------------------------------------

    def project_id(self, region: str, name: str | None = None) -> str:
        """The region's default project (named like the region), or the named one."""
        wanted = name or region
        for project in self.world.state["projects"].values():
            if project["region"] == region and project["name"] == wanted:
                return str(project["id"])
        raise KeyError(f"no project {wanted!r} in {region!r}")

    def vault_id(self, region: str, vault_name: str) -> str:
        state = self.world.state
        for vault in state["vaults"].values():
            if (
                vault["name"] == vault_name
                and state["projects"][vault["project_id"]]["region"] == region
            ):
                return str(vault["id"])
        raise KeyError(f"no vault {vault_name!r} in {region!r}")

    def backup_id(self, name: str) -> str:
        """The id of the backup with this name (source backups win over same-named replicas)."""
        with self.world.lock:
            matches = [b for b in self.world.state["backups"].values() if b["name"] == name]
        originals = [b for b in matches if b["image_type"] == "backup"] or matches
        if len(originals) != 1:
            raise KeyError(f"{len(originals)} backups named {name!r}")
        return str(originals[0]["id"])

    @property
    def access_key(self) -> str:
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.credentials.secret_key

    @property
    def domain_id(self) -> str:
        return self.credentials.domain_id


# ----- CLI ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None, prog: str = "cbr-emulator") -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


def build_parser(prog: str = "cbr-emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local Huawei Cloud CBR v3 + IAM v3 emulator until SIGTERM or "
        "SIGINT; the first line on stdout is its base URL.",
    )
    parser.add_argument("--scenario", required=True, help="scenario YAML (or JSON) file")
    parser.add_argument("--state", type=Path, help="JSON state file, loaded and kept up to date")
    parser.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to serve on (port 0 = any free port; default 127.0.0.1:0)",
    )
    parser.add_argument("--permissive", action="store_true", help="disable the 1009 guard")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every API request"
    )
    parser.add_argument(
        "--faults",
        choices=("none", "base"),
        default="none",
        help="inject the base mix of API faults (default none)",
    )
    parser.add_argument(
        "--fault-rate-scale", type=float, default=1.0, help="multiply the base fault rates"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    parser.add_argument(
        "--clock",
        choices=("real", "manual"),
        default="real",
        help="manual: time moves only through POST /__emulator__/clock/advance",
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="emulated seconds per real second"
    )
    parser.add_argument(
        "--edition", choices=sorted(EDITION_STATUS), help="HTTP statuses of that edition"
    )
    parser.add_argument("--throttle-limit", type=int, help="requests per throttling window")
    parser.add_argument("--throttle-window", type=float, default=1.0, help="window, seconds")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    parser.add_argument("--gateway-prefix", choices=("APIGW", "APIG"), default="APIGW")
    return parser


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port 0-65535")
    return host or "127.0.0.1", int(port)


def gateway_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "throttle_limit": args.throttle_limit,
        "throttle_window_seconds": args.throttle_window,
        "retry_after": args.retry_after,
        "prefix": args.gateway_prefix,
    }


def fault_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = base_faults(args.fault_rate_scale) if args.faults == "base" else {}
    if args.latency_ms:
        config["latency_ms"] = args.latency_ms
    return config


def main(argv: list[str] | None = None, prog: str = "cbr-emulator") -> int:
    """Serve until SIGTERM/SIGINT; the first stdout line is the base URL. A scenario or an
    address that cannot be used is one line on stderr and exit 2."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before the scenario is read (large ones take seconds): a stop then is a clean exit too.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    args = parse_args(argv, prog)
    try:
        emulator = _emulator_from(args)
        url = emulator.start()
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    try:
        print(url, flush=True)
    except BrokenPipeError:  # nobody reads the URL: stop quietly, as SIGPIPE would
        emulator.stop()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    try:
        stop.wait()
    finally:
        emulator.stop()
    sys.stdout.flush()
    return 0


def _emulator_from(args: argparse.Namespace) -> Emulator:
    scenario = Path(args.scenario)
    if not scenario.is_file() and not (args.state and args.state.is_file()):
        raise ScenarioError(f"{scenario}: no such scenario file")
    host, port = args.listen
    return Emulator(
        scenario,
        state_file=args.state,
        permissive=args.permissive,
        faults=fault_config(args),
        clock=args.clock,
        time_scale=args.time_scale,
        seed=args.seed,
        host=host,
        port=port,
        edition=args.edition,
        gateway=gateway_config(args),
    )
