"""Outbound network plumbing: one backoff with jitter for every retry loop.

`Backoff` is imported by the client library, which must stay light: nothing here imports an HTTP stack.
"""

from __future__ import annotations

from tollgate.net._backoff import Backoff, Jitter

__all__ = ["Backoff", "Jitter"]
