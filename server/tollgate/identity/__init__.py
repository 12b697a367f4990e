"""Who is asking: callers proven by the transport (mTLS certificates, Unix-socket peer credentials, signed tokens)
and the principals each may speak for."""

from tollgate.identity._callers import (
    ANONYMOUS,
    CALLER_UNAUTHENTICATED,
    PRINCIPAL_MISMATCH,
    TOKEN_LEEWAY,
    TOKEN_METADATA_KEY,
    Caller,
    CallerEntry,
    CallerMap,
    CallerResolver,
    IdentityConfigError,
    TokenSettings,
    TokenVerifier,
    certificate_caller,
    uds_caller,
    valid_caller_id,
)
from tollgate.identity._peercred import PeerCredentialRelay, peer_credentials, private_dir

__all__ = [
    "ANONYMOUS",
    "CALLER_UNAUTHENTICATED",
    "PRINCIPAL_MISMATCH",
    "TOKEN_LEEWAY",
    "TOKEN_METADATA_KEY",
    "Caller",
    "CallerEntry",
    "CallerMap",
    "CallerResolver",
    "IdentityConfigError",
    "PeerCredentialRelay",
    "TokenSettings",
    "TokenVerifier",
    "certificate_caller",
    "peer_credentials",
    "private_dir",
    "uds_caller",
    "valid_caller_id",
]
