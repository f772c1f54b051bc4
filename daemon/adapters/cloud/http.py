"""The HTTP layer under the SDK: every connection joins the request's total deadline, and a
redirect is refused (the API never redirects; following one would send the signature on).
"""

from __future__ import annotations

from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from daemon.adapters.deadlines import GUARD
from daemon.core.errors import MalformedAnswerError


class _DeadlineHTTPConnection(HTTPConnection):
    """Attaches itself to the calling thread's request deadline (``adapters.deadlines``)."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        GUARD.attach(self)
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        GUARD.attach(self)
        super().request(*args, **kwargs)


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through the proxy) take part in each
    request's total deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


def refuse_redirect(response: Any) -> None:
    """The SDK raises for 4xx and 5xx only: a 3xx (a captive portal, a wrong endpoint) would
    pass as the API's answer, its body read as a listing. It is no answer of the API."""
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and not 200 <= status < 300:
        raise MalformedAnswerError(
            f"HTTP {status} instead of the API's answer (a redirect: check the endpoint and "
            "any proxy in between)",
            code="unexpected_status",
            status=status,
        )
