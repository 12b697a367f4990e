"""A remote OPA engine: the same Engine protocol answered by an OPA server's REST API (`--engine opa+http://H:P`).

For teams that already run OPA servers: the policy (the repo's rego/ built into a bundle) is loaded into OPA by
OPA itself (its bundle plugin); the sidecar loads no bundle. Every evaluation is `POST /v1/data/<entrypoint>`
(and the mask rule's `POST /v1/data/<mask>` beside it) through `opa-python-client`'s AsyncOpaClient, bounded
by the same deadline as the embedded engine (EngineConfig.deadline: eval_timeout plus the input allowance):
past it EvaluationTimeout; an unreachable OPA, an HTTP error or a malformed answer is EngineError, which the
authorizer turns into a logged DENY `engine_error` (fail closed). The revision is the one OPA reports for its
bundle: `GET /v1/status` (bundles.*.active_revision, when OPA's status plugin runs), else the manifest in
`GET /v1/data/system/bundles`; "remote:unknown" when OPA reports neither.

Over `opa+https://` OPA's certificate is always verified (against ca_file, else the system's trust store), with a
client certificate for mTLS when cert_file is given, and a bearer token (OPA's `--authentication=token`) on every
request when token is: a certificate that does not verify is an EngineError like any unreachable OPA, never a
retry without verification.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
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


def client_context(target: RemoteTarget, *, ca_file: str = "", cert_file: str = "", key_file: str = ""
                   ) -> ssl.SSLContext | None:
    """The TLS an `opa+https` target is reached with: OPA's certificate verified against ca_file (PEM; else the
    system's trust store) and its host name checked, and cert_file/key_file presented for mTLS. None for
    `opa+http`. ValueError naming the file when one cannot be loaded, or when TLS files are given for http."""
    if not target.tls:
        if ca_file or cert_file or key_file:
            raise ValueError(f"engine {target.url}: a CA, client certificate or key needs opa+https://")
        return None
    if bool(cert_file) != bool(key_file):
        raise ValueError("engine_cert_file and engine_key_file: give both (mTLS) or neither")
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"engine_ca_file: {ca_file!r} cannot be loaded ({exc})") from exc
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"engine_cert_file, engine_key_file: {cert_file!r} and {key_file!r} cannot be loaded "
                             f"({exc})") from exc
    return context


class _Client(AsyncOpaClient):  # type: ignore[misc]  # an untyped base
    """opa-python-client's AsyncOpaClient, whose session uses the TLS context given (its own builds one from the
    system's trust store only: no private CA, and a client certificate only as a single file)."""

    def __init__(self, context: ssl.SSLContext | None, **options: Any) -> None:
        super().__init__(**options)
        self._context = context

    async def _init_session(self) -> None:
        self._connector = aiohttp.TCPConnector(ssl=self._context if self._context is not None else True)
        self._session = aiohttp.ClientSession(headers=self.headers, connector=self._connector,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout))


class RemoteOpaEngine:
    """An Engine answered by an OPA server. One aiohttp session (the client's), opened on start."""

    def __init__(self, target: RemoteTarget, *, entrypoint: str = "tollgate/decision",
                 mask: str = "tollgate/log/mask", eval_timeout: float = 0.050, input_allowance: float = 0.5,
                 token: str = "", context: ssl.SSLContext | None = None) -> None:
        """context: the TLS of an opa+https target (client_context; by default the system's trust store)."""
        self.target = target
        self._entrypoint = entrypoint.strip("/")
        self._mask = mask.strip("/")
        self._eval_timeout = eval_timeout
        self._input_allowance = input_allowance
        # retries=0: a retry is the caller's to decide within its deadline; the session's own timeout is a
        # backstop only (every call is bounded by asyncio's timeout below).
        if target.tls and context is None:
            context = client_context(target)
        self._client = _Client(context, host=target.host, port=target.port, ssl=target.tls, retries=0,
                               timeout=max(5.0, eval_timeout * 10), **({"token": token} if token else {}))
        self._revision = UNKNOWN_REVISION
        self._started = False
        #: Why the last health check failed ("" when it passed, or before the first).
        self.unhealthy = ""

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
        """OPA's /health answers 200 with its bundles activated (`?bundles`); else `unhealthy` says why (an
        HTTP status, a refused connection, a certificate that does not verify, no answer in time)."""
        why = ""
        try:
            async with asyncio.timeout(timeout), self._client._request(
                    "GET", f"{self.target.url}/health?bundles=true") as response:
                why = "" if response.status == 200 else f"HTTP {response.status}"
        except TimeoutError:
            why = f"no answer within {timeout:g}s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # what check_health would swallow: kept, so the log names the cause
            why = f"{type(exc).__name__}: {exc}"
        self.unhealthy = why
        return not why

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
