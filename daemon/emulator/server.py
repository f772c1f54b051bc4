"""The HTTP front of the emulator: routing, AK/SK checks, faults, request log, admin API.

HTTP/1.1 with keep-alive (every answer has Content-Length), one thread per connection. Admin
endpoints live under /__emulator__/, need no signature and never see faults or the log.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from daemon.emulator import operations
from daemon.emulator.auth import AuthError, Credentials, verify_request
from daemon.emulator.faults import BEFORE_KINDS, Decision, FaultInjector
from daemon.emulator.gateway import Gateway, Refusal
from daemon.emulator.world import ApiError, Payload, Query, World, edition_status

_ENCODER = msgspec.json.Encoder()

ADMIN_PREFIX = "/__emulator__/"
_P = r"(?P<project>[^/]+)"
_ID = r"(?P<item>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/v3/projects/?$"), "list_projects"),
    ("GET", re.compile(rf"^/v3/{_P}/backups/?$"), "list_backups"),
    ("GET", re.compile(rf"^/v3/{_P}/backups/{_ID}/?$"), "show_backup"),
    ("POST", re.compile(rf"^/v3/{_P}/backups/{_ID}/replicate/?$"), "replicate_backup"),
    ("POST", re.compile(rf"^/v3/{_P}/checkpoints/replicate/?$"), "replicate_vault"),
    ("GET", re.compile(rf"^/v3/{_P}/vaults/?$"), "list_vaults"),
    ("GET", re.compile(rf"^/v3/{_P}/vaults/{_ID}/?$"), "show_vault"),
    ("GET", re.compile(rf"^/v3/{_P}/replication-capabilities/?$"), "capabilities"),
    ("GET", re.compile(rf"^/v3/{_P}/operation-logs/?$"), "oplogs"),
]


@dataclass(frozen=True)
class Call:
    """One API request as routed."""

    method: str
    raw_query: str
    body: bytes
    found: tuple[str, dict[str, str]] | None

    @property
    def operation(self) -> str:
        return self.found[0] if self.found else "unknown"

    @property
    def is_iam(self) -> bool:
        return self.operation == "list_projects"


NOT_FOUND_PAGE = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>"
HTML_PAGE = b"<html><head><title>Gateway</title></head><body><h1>Service busy</h1></body></html>"


class RequestLog:
    """Every API request the emulator answered (or dropped), in arrival order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[Payload] = []
        self._seq = 0
        self._in_flight = 0
        self.most_in_flight = 0  # API requests arrived and not yet answered, at the most
        # For the mean number in flight: in-flight x seconds, from the first arrival to the
        # last answer. A client that keeps its slots full scores its concurrency; a gap
        # between its calls (its CPU, its own bookkeeping) lowers the mean.
        self._in_flight_seconds = 0.0
        self._first_arrival: float | None = None
        self._last_change = 0.0

    def arrived(self) -> None:
        with self._lock:
            self._advance()
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)

    def _advance(self) -> None:
        now = self._clock()
        if self._first_arrival is None:
            self._first_arrival = now
        self._in_flight_seconds += self._in_flight * (now - self._last_change)
        self._last_change = now

    @property
    def mean_in_flight(self) -> float:
        with self._lock:
            if self._first_arrival is None or self._last_change <= self._first_arrival:
                return 0.0
            return self._in_flight_seconds / (self._last_change - self._first_arrival)

    def add(self, entry: Payload) -> None:
        """Log an answered (or dropped) request; it stops counting as in flight before its
        answer leaves, so a client that holds a slot from sending to the answer never
        appears here more than its slots."""
        with self._lock:
            self._advance()
            self._seq += 1
            self._in_flight -= 1
            self._entries.append({"seq": self._seq, **entry})

    def entries(self, operation: str | None = None) -> list[Payload]:
        with self._lock:
            return [dict(e) for e in self._entries if operation in (None, e["operation"])]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.most_in_flight = self._in_flight
            self._in_flight_seconds = 0.0
            self._first_arrival = None
            self._last_change = self._clock()


class EmulatorHTTPServer(ThreadingHTTPServer):
    """Holds the world, the faults and the log for the handler threads."""

    daemon_threads = True
    request_queue_size = 1024
    scheme = "http"
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        world: World,
        faults: FaultInjector,
        credentials: Credentials,
        gateway: Gateway | None = None,
    ) -> None:
        super().__init__(address, EmulatorHandler)
        self.world = world
        self.faults = faults
        self.credentials = credentials
        self.gateway = gateway or Gateway(clock=world.clock.now)
        self.log = RequestLog()
        self.unstable_turn = 0  # the `unstable_unless_sorted` listing mode's turn

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"


def route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, operation in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return operation, {k: unquote(v) for k, v in match.groupdict().items()}
    return None


def dispatch(
    server: EmulatorHTTPServer, operation: str, params: dict[str, str], query: Query, body: Any
) -> Payload:
    """Run one API operation (caller holds the world lock)."""
    world = server.world
    project = params.get("project", "")
    item = params.get("item", "")
    handlers: dict[str, Callable[[], Payload]] = {
        "list_projects": lambda: operations.list_projects(world, query, server.base_url),
        "list_backups": lambda: operations.list_backups(world, project, query),
        "show_backup": lambda: operations.show_backup(world, project, item),
        "replicate_backup": lambda: operations.replicate_backup(world, project, item, body),
        "replicate_vault": lambda: operations.replicate_vault(world, project, body),
        "list_vaults": lambda: operations.list_vaults(world, project, query),
        "show_vault": lambda: operations.show_vault(world, project, item),
        "capabilities": lambda: operations.capabilities(world, project),
        "oplogs": lambda: operations.list_oplogs(world, project, query),
    }
    return handlers[operation]()


_LISTED = {"list_backups": "backups", "list_vaults": "vaults"}
# Orders the `unstable_unless_sorted` mode takes turns with, one per answer.
_UNSTABLE_ORDERS = ("name:asc", "id:asc", "created_at:asc", "id:desc", "name:desc")
ENDLESS_COUNT = 10**12


def misbehave_listing(
    server: EmulatorHTTPServer,
    decision: Decision,
    *,
    found: tuple[str, dict[str, str]],
    query: Query,
    body: Any,
    payload: Payload,
) -> Payload:
    """A listing answer as a faulty server gives it (faults.LISTING_MODES), and the backups
    deleted meanwhile (`listing_deletes`). Runs with the world lock held."""
    operation, params = found
    key = _LISTED.get(operation)
    listed_vault = next(iter(query.get("vault_id") or []), None)
    if key is None or (
        decision.listing_vaults is not None and (listed_vault not in decision.listing_vaults)
    ):
        return payload
    mode = decision.listing
    if mode == "ignore_offset":
        payload = dispatch(server, operation, params, {**query, "offset": ["0"]}, body)
        payload.pop("count", None)
    elif mode == "count_is_page":
        payload["count"] = len(payload[key])
    elif mode in ("endless", "endless_count") and operation == "list_backups":
        limit = int((query.get("limit") or ["1000"])[0])
        payload[key] = [_fresh_backup(payload[key], query) for _ in range(limit)]
        payload.pop("count", None)
        if mode == "endless_count":
            payload["count"] = ENDLESS_COUNT
    elif mode == "unstable_unless_sorted" and "sort" not in query:
        server.unstable_turn += 1
        order = _UNSTABLE_ORDERS[server.unstable_turn % len(_UNSTABLE_ORDERS)]
        payload = dispatch(server, operation, params, {**query, "sort": [order]}, body)
    if decision.listing_deletes and operation == "list_backups":
        _delete_oldest(server.world, params.get("project", ""), query, decision.listing_deletes)
    return payload


def _fresh_backup(items: list[Payload], query: Query) -> Payload:
    """A backup never listed before, like the listed ones (or a minimal one)."""
    backup_id = str(uuid.uuid4())
    template = (
        items[0]
        if items
        else {
            "resource_type": "OS::Nova::Server",
            "image_type": "backup",
            "status": "available",
            "resource_size": 1,
            "created_at": "2026-01-01T00:00:00.000000",
            "extend_info": {"contain_system_disk": True},
        }
    )
    vault_id = next(iter(query.get("vault_id") or []), str(template.get("vault_id", "")))
    return {
        **template,
        "id": backup_id,
        "name": f"endless-{backup_id[:8]}",
        "vault_id": vault_id,
        "replication_records": [],
    }


def _delete_oldest(world: World, project_id: str, query: Query, count: int) -> None:
    vault_id = next(iter(query.get("vault_id") or []), None)
    for backup_id in list(world.sorted_ids(project_id, vault_id))[-count:]:
        world.delete_backup(backup_id)


def error_body(code: str, message: str, request_id: str | None = None) -> bytes:
    body: Payload = {"error_code": code, "error_msg": message}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body).encode()


class EmulatorHandler(BaseHTTPRequestHandler):
    """One request: admin, or auth -> faults -> operation -> (faulty) answer."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body leave in two writes; with Nagle the body waited for the
    # client's delayed ACK, adding ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer
    request_id: str
    entry: Payload | None = None

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: tests and the demo read the structured request log instead.
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ----- plumbing ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._record(status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Request-Id", self.request_id)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout during a slow answer).
            self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a reset, not a clean EOF.
        self._record(None)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _handle(self, method: str) -> None:
        self.request_id = uuid.uuid4().hex
        self.entry = None
        path, _, raw_query = self.path.partition("?")
        body = self._read_body()
        if path.startswith(ADMIN_PREFIX):
            self._admin(method, path[len(ADMIN_PREFIX) :].strip("/"), raw_query, body)
            return
        self._api(method, path, raw_query, body)

    # ----- API ---------------------------------------------------------------------------

    def _api(self, method: str, path: str, raw_query: str, body: bytes) -> None:
        self.server.log.arrived()
        found = route(method, path)
        call = Call(method, raw_query, body, found)
        project_id = found[1].get("project", "") if found else ""
        project = self.server.world.state["projects"].get(project_id) or {}
        entry: Payload = {
            "method": method,
            "path": path,
            "query": raw_query,
            "params": parse_qs(raw_query, keep_blank_values=True),
            "operation": call.operation,
            "project_id": project_id or None,
            "region": project.get("region"),
            "body": _json_or_none(body) if body else None,
            "request_id": self.request_id,
        }
        decision = self.server.faults.decide(call.operation, method, call.is_iam)
        if decision.latency_seconds > 0:
            time.sleep(decision.latency_seconds)
        self.entry = entry
        self._answer(call, decision, entry)

    def _record(self, status: int | None) -> None:
        # Logged before the answer leaves, so a client that got an answer always finds it.
        if self.entry is not None:
            self.server.log.add({**self.entry, "status": status})
            self.entry = None

    def _answer(self, call: Call, decision: Decision, entry: Payload) -> None:
        """Answer one call, applying at most one fault (noted in the log entry)."""
        entry["fault"] = None
        gateway = self.server.gateway
        refusal = self._check_signature(call) or gateway.no_such_api(
            call.operation if call.found else None, entry["region"]
        )
        refusal = refusal or gateway.admit()
        if refusal is not None or call.found is None:
            self._refuse_at_gateway(refusal)
            return
        entry["fault"] = decision.kind
        if decision.kind in BEFORE_KINDS:
            self._refuse(str(decision.kind))
            return
        status, answer = self._apply(call.found, call.raw_query, call.body, decision)
        self._deliver(status, answer, decision)

    def _check_signature(self, call: Call) -> Refusal | None:
        """The gateway's signing guards, in its order: a locked key, the signing date, the
        signature itself."""
        gateway = self.server.gateway
        access_key = _access_key(self.headers.get("Authorization"))
        refusal = gateway.locked(access_key)
        if refusal is not None:
            return refusal
        expired = gateway.check_date(self.headers.get("X-Sdk-Date"))
        if expired is not None:
            return gateway.auth_failed(access_key, expired)
        try:
            verify_request(call.method, self.path, self.headers.get, call.body, self.credentials)
        except AuthError as error:
            return gateway.auth_failed(access_key, str(error))
        gateway.auth_passed(access_key)
        return None

    def _refuse_at_gateway(self, refusal: Refusal | None) -> None:
        if refusal is not None and not refusal.code:  # a proxy's page, not the gateway's
            self._send(refusal.status, NOT_FOUND_PAGE, content_type="text/html")
        elif refusal is not None:
            body = error_body(refusal.code, refusal.message, self.request_id)
            self._send(refusal.status, body, headers=refusal.headers)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header shows the gateway's clock (which a test may set off the real one).
        moment = self.server.gateway.now() if timestamp is None else timestamp
        return super().date_time_string(moment)

    @property
    def credentials(self) -> Credentials:
        return self.server.credentials

    def _apply(
        self, found: tuple[str, dict[str, str]], raw_query: str, body: bytes, decision: Decision
    ) -> tuple[int, bytes]:
        operation, params = found
        query = parse_qs(raw_query, keep_blank_values=True)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            return 400, error_body("BackupService.9900", "The request body is not valid JSON.")
        world = self.server.world
        with world.lock:
            world.tick()
            try:
                payload = dispatch(self.server, operation, params, query, parsed)
                if decision.listing or decision.listing_deletes:
                    payload = misbehave_listing(
                        self.server,
                        decision,
                        found=(operation, params),
                        query=query,
                        body=parsed,
                        payload=payload,
                    )
            except ApiError as error:
                status = edition_status(world.edition, error.code, error.status)
                return status, error_body(error.code, error.message)
            # msgspec, not json.dumps: a page of 1,000 backups takes 1.3 ms instead of 15, and
            # the emulator shares the benchmark's cores with the daemon it measures.
            return 200, _ENCODER.encode(payload)

    def _refuse(self, kind: str) -> None:
        if kind == "throttle":
            message = (
                "The throttling threshold has been reached: "
                "policy user over ratelimit,limit:20,time:1 second"
            )
            self._send(
                429,
                error_body("APIGW.0308", message, self.request_id),
                headers={"Retry-After": "1"},
            )
        elif kind == "html":
            self._send(200, HTML_PAGE, content_type="text/html")
        else:
            self._send(500, error_body("BackupService.9910", "Unknown error."))

    def _deliver(self, status: int, answer: bytes, decision: Decision) -> None:
        kind = decision.kind
        if kind == "error_after":
            self._send(500, error_body("BackupService.9910", "Unknown error."))
            return
        if kind == "reset_after":
            self._reset()
            return
        if kind == "slow_after":
            self._record(status)
            time.sleep(decision.slow_seconds)
        if kind == "malformed" and status == 200:
            answer = answer[: max(1, len(answer) // 2)]
        if kind == "drip":
            self._drip(status, answer, decision.drip_bytes_per_second)
            return
        if kind == "redirect":  # the operation's own body, under a redirect's status
            self._send(302, answer, headers={"Location": "/elsewhere"})
            return
        self._send(status, answer)

    def _drip(self, status: int, answer: bytes, per_second: float) -> None:
        """The headers at once, then the body a few bytes at a time at ``per_second``: every
        read gets something well within any read timeout, the whole answer takes ages."""
        self._record(status)
        step = max(1, int(per_second / 10))
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.flush()
            for start in range(0, len(answer), step):
                self.wfile.write(answer[start : start + step])
                self.wfile.flush()
                time.sleep(step / per_second)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what its deadline is for
        self.close_connection = True

    # ----- admin -------------------------------------------------------------------------

    def _admin(self, method: str, name: str, raw_query: str, body: bytes) -> None:
        try:
            status, payload = admin(self.server, method, name, parse_qs(raw_query), body)
        except (ValueError, KeyError, TypeError, ApiError) as error:
            status, payload = 400, {"error": str(error)}
        self._send(status, json.dumps(payload).encode())


def admin(
    server: EmulatorHTTPServer, method: str, name: str, query: Query, body: bytes
) -> tuple[int, Payload]:
    """The test/demo control surface (no auth, no faults, not logged)."""
    data = json.loads(body) if body else {}
    handler = ADMIN_HANDLERS.get((method, name))
    if handler is not None:
        return 200, handler(server, query, data)
    match = re.fullmatch(r"backups/([^/]+)/delete", name)
    if method == "POST" and match:
        deleted = server.world.delete_backup(unquote(match[1]))
        return (200 if deleted else 404), {"deleted": deleted}
    return 404, {"error": f"unknown admin endpoint {method} {name}"}


def _admin_requests(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    wanted = query.get("operation", [None])[0]
    log = server.log
    return {
        "requests": log.entries(wanted),
        "most_in_flight": log.most_in_flight,
        "mean_in_flight": round(log.mean_in_flight, 2),
    }


def _admin_clear(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    server.log.clear()
    return {"cleared": True}


def _admin_advance(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    server.world.advance(float(data["seconds"]))
    return {"now": server.world.clock.now()}


def _admin_set_faults(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    server.faults.set(dict(data))
    return {"faults": server.faults.config}


def _admin_state(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    world = server.world
    with world.lock:
        world.tick()
        state: Payload = json.loads(json.dumps(world.state))
        return state


def _admin_set_gateway(server: EmulatorHTTPServer, query: Query, data: Any) -> Payload:
    server.gateway.set(dict(data))
    return {"gateway": server.gateway.config}


AdminHandler = Callable[[EmulatorHTTPServer, Query, Any], Payload]
ADMIN_HANDLERS: dict[tuple[str, str], AdminHandler] = {
    ("GET", "health"): lambda server, q, d: {"status": "ok", "url": server.base_url},
    ("GET", "requests"): _admin_requests,
    ("DELETE", "requests"): _admin_clear,
    ("POST", "clock/advance"): _admin_advance,
    ("GET", "faults"): lambda server, q, d: {"faults": server.faults.config},
    ("PUT", "faults"): _admin_set_faults,
    ("GET", "gateway"): lambda server, q, d: {"gateway": server.gateway.config},
    ("PUT", "gateway"): _admin_set_gateway,
    ("GET", "state"): _admin_state,
    ("GET", "duplicates"): lambda server, q, d: {"duplicates": server.world.duplicates()},
    ("POST", "backups"): lambda server, q, d: {"backup": server.world.add_backup(dict(d))},
}


def _access_key(authorization: str | None) -> str:
    match = re.search(r"Access=([^,\s]+)", authorization or "")
    return match[1] if match else ""


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
