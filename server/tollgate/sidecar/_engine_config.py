"""The `tollgate serve` settings of where policy is evaluated: the engine, and how a remote OPA is reached (TLS with
a private CA, a client certificate, a bearer token). ServeConfig inherits them, so each is a config key and a flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tollgate.sidecar._config_files import ConfigError, read_secret

if TYPE_CHECKING:
    from tollgate.engine._remote import RemoteOpaEngine

_TLS_FILES = ("engine_ca_file", "engine_cert_file", "engine_key_file")


@dataclass(frozen=True)
class EngineSettings:
    """The engine keys of ServeConfig."""

    #: "embedded" (the bundle in worker processes), or an OPA server holding the bundle itself: opa+http(s)://H:P.
    engine: str = "embedded"
    #: PEM CA certificates a remote OPA's (opa+https) certificate must chain to, in place of the system's trust store.
    engine_ca_file: str = ""
    #: A client certificate (PEM) presented to a remote OPA that requires one (mTLS), with engine_key_file.
    engine_cert_file: str = ""
    #: The private key (PEM) of engine_cert_file.
    engine_key_file: str = ""
    #: A file holding the bearer token sent to a remote OPA (OPA's --authentication=token); never on argv.
    engine_token_file: str = ""

    def _validate_engine(self) -> None:
        if self.engine != "embedded" and not self.engine.startswith(("opa+http://", "opa+https://")):
            raise ConfigError(f"engine: 'embedded', opa+http://HOST:PORT or opa+https://HOST:PORT, not {self.engine!r}")
        given = [name for name in (*_TLS_FILES, "engine_token_file") if getattr(self, name)]
        if given and self.engine == "embedded":
            raise ConfigError(f"{given[0]}: needs a remote engine (--engine opa+https://HOST:PORT)")
        tls = [name for name in _TLS_FILES if getattr(self, name)]
        if tls and not self.engine.startswith("opa+https://"):
            raise ConfigError(f"{tls[0]}: needs --engine opa+https://HOST:PORT (TLS to the OPA server)")
        if bool(self.engine_cert_file) != bool(self.engine_key_file):
            raise ConfigError("engine_cert_file, engine_key_file: give both (a client certificate and its key) or "
                              "neither")
        for name in given:
            if not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not a readable file")

    def remote_engine(self, *, entrypoint: str, eval_timeout: float) -> RemoteOpaEngine:
        """The remote OPA engine these settings name, its TLS and token loaded now (ConfigError naming the key
        that cannot be used: a start-up error, not a request's)."""
        from tollgate.engine._remote import RemoteOpaEngine, client_context, parse_target

        token = read_secret("engine_token_file", self.engine_token_file) if self.engine_token_file else ""
        try:
            target = parse_target(self.engine)
            context = client_context(target, ca_file=self.engine_ca_file, cert_file=self.engine_cert_file,
                                     key_file=self.engine_key_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return RemoteOpaEngine(target, entrypoint=entrypoint, eval_timeout=eval_timeout, token=token,
                               context=context)
