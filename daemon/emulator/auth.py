"""AK/SK request verification: the SDK-HMAC-SHA256 scheme, written from the algorithm.

The SDK signs: METHOD, the canonical URI (each path segment unquoted then quoted with only
`~` safe, always ending in `/`), the query pairs sorted and quoted the same way, the signed
headers as `name:value` lines, the signed-header list, and the hex sha256 of the body. The
string to sign is `SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256 of the canonical request>`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_HASH = hashlib.sha256(b"").hexdigest()
_AUTH_PATTERN = re.compile(
    r"^SDK-HMAC-SHA256\s+Access=(?P<access>[^,\s]+),\s*"
    r"SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*$"
)

HeaderLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class Credentials:
    """The one account the emulated cloud knows."""

    access_key: str
    secret_key: str
    domain_id: str


class AuthError(Exception):
    """The request is not signed by the configured account."""


def verify_request(
    method: str, target: str, header: HeaderLookup, body: bytes, credentials: Credentials
) -> None:
    """Raise AuthError unless `Authorization` holds a valid signature by our AK/SK."""
    authorization = header("Authorization")
    date = header("X-Sdk-Date")
    if not authorization or not date:
        raise AuthError("missing Authorization or X-Sdk-Date header")
    match = _AUTH_PATTERN.match(authorization.strip())
    if match is None:
        raise AuthError("malformed Authorization header")
    if match["access"] != credentials.access_key:
        raise AuthError("unknown access key")
    signed_headers = match["headers"].split(";")
    canonical = canonical_request(method, target, signed_headers, header, body)
    expected = sign(canonical, date.strip(), credentials.secret_key)
    if not hmac.compare_digest(expected, match["signature"].lower()):
        raise AuthError("signature mismatch")


def canonical_request(
    method: str, target: str, signed_headers: list[str], header: HeaderLookup, body: bytes
) -> str:
    """Rebuild the SDK's canonical request from what arrived on the wire."""
    path, _, query = target.partition("?")
    lines = [
        method.upper(),
        canonical_uri(path),
        canonical_query(query),
        canonical_headers(signed_headers, header),
        ";".join(signed_headers),
        payload_hash(header, body),
    ]
    return "\n".join(lines)


def canonical_uri(path: str) -> str:
    encoded = "/".join(quote(segment, safe="~") for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(key, safe='~')}={quote(value, safe='~')}" for key, value in pairs)


def canonical_headers(signed_headers: list[str], header: HeaderLookup) -> str:
    lines = []
    for name in signed_headers:
        value = header(name)
        if value is None:
            raise AuthError(f"signed header {name!r} is missing")
        lines.append(f"{name}:{_wire_to_text(value).strip()}\n")
    return "".join(lines)


def payload_hash(header: HeaderLookup, body: bytes) -> str:
    # The SDK hashes an empty body as the empty-string digest and, for non-JSON uploads,
    # signs the literal X-Sdk-Content-Sha256 value (UNSIGNED-PAYLOAD) instead of the body.
    if not body:
        return EMPTY_HASH
    declared = header("X-Sdk-Content-Sha256")
    return declared if declared else hashlib.sha256(body).hexdigest()


def sign(canonical: str, date: str, secret_key: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{date}\n{digest}"
    return hmac.new(
        secret_key.encode("utf-8"), string_to_sign.encode("utf-8"), "sha256"
    ).hexdigest()


def _wire_to_text(value: str) -> str:
    # The SDK sends UTF-8 header bytes; http.server decodes them as latin-1.
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value
