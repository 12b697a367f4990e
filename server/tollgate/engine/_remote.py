"""A remote OPA engine: the same Engine protocol answered by an OPA server's REST API (`--engine opa+http://H:P`).

For teams that already run OPA servers: the policy (the repo's rego/ built into a bundle) is loaded into OPA by
OPA itself (its bundle plugin); the sidecar loads no bundle. Every evaluation is `POST /v1/data/<entrypoint>`
(and the mask rule's `POST /v1/data/<mask>` beside it) through `opa-python-client`'s AsyncOpaClient, bounded
by the same deadline as the embedded engine (EngineConfig.deadline: eval_timeout plus the input allowance):
past it EvaluationTimeout; an unreachable OPA, an HTTP error or a malformed answer is EngineError, which the
authorizer turns into a logged DENY `engine_error` (fail closed). The revision is the one OPA reports for its
bundle: `GET /v1/status` (bundles.*.active_revision, when OPA's status plugin runs), else the manifest in
`GET /v1/data/system/bundles`; "remote:unknown" when OPA reports neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opa_client.opa_async import AsyncOpaClient  # type: ignore[import-untyped]  # no py.typed

from tollgate.engine._base import UNDEFINED, EngineError, Evaluation, EvaluationTimeout

log = logging.getLogger(__name__)

SCHEMES = ("opa+http", "opa+https")
UNKNOWN_REVISION = "remote:unknown"


@dataclass(frozen=True)
class RemoteTarget:
    """Where the OPA server is: parsed from `opa+http://HOST:PORT` or `opa+https://HOST:PORT`."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def is_remote(engine: str) -> bool:
    """Whether an `engine` setting names a remote OPA (rather than "embedded")."""
    return engine.split("://", 1)[0] in SCHEMES


def parse_target(engine: str) -> RemoteTarget:
    """The OPA server an `engine` setting names; ValueError for anything else."""
    parts = urlsplit(engine)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"engine {engine!r}: expected embedded, opa+http://HOST:PORT or opa+https://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"engine {engine!r}: only HOST:PORT (no path, query or credentials)")
    tls = parts.scheme == "opa+https"
    return RemoteTarget(parts.hostname, parts.port or (443 if tls else 8181), tls)


class RemoteOpaEngine:
    """An Engine answered by an OPA server. One aiohttp session (the client's), opened on start."""

    def __init__(self, target: RemoteTarget, *, entrypoint: str = "tollgate/decision",
                 mask: str = "tollgate/log/mask", eval_timeout: float = 0.050, input_allowance: float = 0.5,
                 token: str = "") -> None:
        self.target = target
        self._entrypoint = entrypoint.strip("/")
        self._mask = mask.strip("/")
        self._eval_timeout = eval_timeout
        self._input_allowance = input_allowance
        # retries=0: a retry is the caller's to decide within its deadline; the session's own timeout is a
        # backstop only (every call is bounded by asyncio's timeout below).
        self._client = AsyncOpaClient(host=target.host, port=target.port, ssl=target.tls, retries=0,
                                      timeout=max(5.0, eval_timeout * 10), **({"token": token} if token else {}))
        self._revision = UNKNOWN_REVISION
        self._started = False

    @property
    def revision(self) -> str:
        return self._revision

    async def start(self) -> None:
        """Open the session and read the bundle revision OPA reports."""
        if not self._started:
            await self._client._init_session()
            self._started = True
        await self.refresh_revision()

    def deadline(self, input_bytes: int) -> float:
        return self._eval_timeout + self._input_allowance * input_bytes / (1 << 20)

    async def healthy(self, timeout: float = 2.0) -> bool:
        """OPA's /health answers 200 with its bundles activated (`?bundles`)."""
        try:
            async with asyncio.timeout(timeout):
                return bool(await self._client.check_health(query={"bundles": True}))
        except TimeoutError:
            return False

    async def refresh_revision(self, timeout: float = 2.0) -> str:
        """The revision of OPA's active bundle, from its status API or the bundle manifest it serves."""
        try:
            async with asyncio.timeout(timeout):
                self._revision = await self._read_revision()
        except Exception as exc:  # a revision we cannot read is reported, not fatal
            log.warning("remote OPA %s: no bundle revision (%s)", self.target.url, exc)
        return self._revision

    async def _read_revision(self) -> str:
        try:
            status = await self._client.get_status()
            bundles = (status.get("result") or {}).get("bundles") or {}
            revisions = sorted(str(b.get("active_revision")) for b in bundles.values() if b.get("active_revision"))
            if revisions:
                return ",".join(revisions)
        except Exception as exc:  # OPA without the status plugin answers 500
            log.debug("remote OPA %s: /v1/status: %s", self.target.url, exc)
        data = await self._client.get_data("system/bundles")
        manifests = (data.get("result") or {}) if isinstance(data, dict) else {}
        revisions = sorted(str((m.get("manifest") or {}).get("revision")) for m in manifests.values()
                           if isinstance(m, dict) and (m.get("manifest") or {}).get("revision"))
        return ",".join(revisions) if revisions else UNKNOWN_REVISION

    async def _query(self, path: str, input_doc: Any) -> Any:
        try:
            answer = await self._client.query_rule(input_data=input_doc, package_path=path)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused, HTTP 4xx/5xx, a body that is not JSON
            raise EngineError("engine_error", f"remote OPA {self.target.url}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, dict):
            raise EngineError("internal", f"remote OPA {self.target.url}: malformed answer")
        return answer["result"] if "result" in answer else UNDEFINED

    async def evaluate(self, input_json: bytes) -> Any:
        return (await self._evaluate(input_json, with_mask=False)).value

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        return await self._evaluate(input_json, with_mask=bool(self._mask))

    async def _evaluate(self, input_json: bytes, *, with_mask: bool) -> Evaluation:
        if not self._started:
            raise EngineError("closed", "remote engine is not started")
        try:
            input_doc = json.loads(input_json) if input_json else None
        except ValueError as exc:
            raise EngineError("invalid_argument", f"input is not JSON: {exc}") from exc
        deadline = self.deadline(len(input_json))
        decision: Any
        mask: Any
        try:
            async with asyncio.timeout(deadline):
                if not with_mask:
                    return Evaluation(await self._query(self._entrypoint, input_doc))
                decision, mask = await asyncio.gather(self._query(self._entrypoint, input_doc),
                                                      self._query(self._mask, input_doc), return_exceptions=True)
        except TimeoutError:
            raise EvaluationTimeout(f"remote OPA {self.target.url} did not answer within {deadline:g}s") from None
        if isinstance(decision, BaseException):
            if isinstance(decision, EngineError):
                raise decision
            raise EngineError("engine_error", f"remote OPA {self.target.url}: {decision!r}") from decision
        if isinstance(mask, BaseException) and not isinstance(mask, EngineError):
            mask = EngineError("engine_error", f"remote OPA {self.target.url}: mask: {mask!r}")
        return Evaluation(decision, mask)

    async def close(self, *, drain: float = 0.0) -> None:
        if self._started:
            self._started = False
            await self._client.close_connection()
