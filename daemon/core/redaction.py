"""Secrets never shown: the values registered at load, in every form a message may quote
them in (escaped, JSON, URL-encoded), masked in any text; and which keys name a secret.
The one piece of process-wide state in the core: the registered values.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

SECRET_KEY = re.compile(
    r"(^|_)(sk|secret|password|token|authorization|security_token|access_key)($|_)", re.I
)
MASK = "****"
# A password inside a URL's user information: `scheme://user:PASSWORD@host`. Matched in any
# text, so that a URL typed into the wrong field is not echoed with it.
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):([^@/\s]+)@")


class _Secrets:
    """The registered values; ``by_length`` is replaced whole (readers take no lock)."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.by_length: tuple[str, ...] = ()  # longest first: a form inside another goes last
        self.lock = threading.Lock()

    def update(self, values: set[str]) -> None:
        with self.lock:
            self.values |= values
            self.by_length = tuple(sorted(self.values, key=len, reverse=True))

    def clear(self) -> None:
        with self.lock:
            self.values.clear()
            self.by_length = ()


_secrets = _Secrets()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never appear in a log line, whatever key carries them, nor in any of
    the forms a message may quote them in."""
    forms = {form for value in values if value for form in secret_forms(value)}
    _secrets.update({form for form in forms if len(form) >= 4})


def secret_forms(secret: str) -> set[str]:
    """``secret`` as the messages that quote it spell it: as it is or without the whitespace
    around it; escaped by ``repr`` (an exception quoting a header value: ``AK\\n``) or by
    JSON (the ledger, a webhook body), once or twice (a JSON document quoting such a message);
    URL-encoded (a query string, a proxy URL)."""
    forms = set()
    for text in {secret, secret.strip()}:
        for once in _escaped(text):
            forms |= _escaped(once)
        forms |= {quote(text, safe=""), quote(text), quote_plus(text)}
    return forms


def _escaped(text: str) -> set[str]:
    return {
        text,
        repr(text)[1:-1],
        ascii(text)[1:-1],
        text.encode("unicode_escape").decode("ascii"),
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
    }


def clear_registered_secrets() -> None:
    _secrets.clear()


def redact_text(text: str) -> str:
    for secret in _secrets.by_length:
        text = text.replace(secret, MASK)
    return text


def mask_url_passwords(text: str) -> str:
    """``scheme://user:****@host`` for every URL in ``text`` that carries a password."""
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: MASK if secret_key(key) else redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    return redact_text(str(value))  # exceptions, paths, times: their text, redacted


def secret_key(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def url_label(url: str) -> str:
    """What logs may say about a URL: its scheme and host (paths of ping URLs are tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
