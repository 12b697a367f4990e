"""Outbound network plumbing: one backoff with jitter for every retry loop, one HTTP client (httpx2) for every
outbound request.

The client library imports `Backoff` and must stay light, so httpx2 is loaded only when `HttpClient` is first
used; the values (options, answers, failures) cost nothing to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollgate.net._backoff import Backoff, Jitter
from tollgate.net._http import HttpOptions, RequestFailed, Response, ssl_context

if TYPE_CHECKING:
    from tollgate.net._client import HttpClient


def __getattr__(name: str) -> Any:
    if name == "HttpClient":
        from tollgate.net._client import HttpClient

        return HttpClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Backoff", "HttpClient", "HttpOptions", "Jitter", "RequestFailed", "Response", "ssl_context"]
