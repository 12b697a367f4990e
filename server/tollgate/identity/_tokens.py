"""Who calls the admin and approval APIs: a person (their own token, their client certificate, their OpenID
Connect token) or automation (the shared admin token, an admin identity), and the names each is recorded as.

An approval names the person whose credential decided it, never a name the caller declared: the API takes the
approver from the caller (api/_admin.py resolves the credential into an ApiCaller). The shared admin token acts
as itself, recorded as `admin-token`: it decides only approvals whose approvers name `admin-token` (directly or
through approver_groups), so a policy says where automation may approve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.identity._callers import IdentityConfigError, valid_caller_id

#: The identity the shared admin token acts (and is recorded) as.
ADMIN_TOKEN_ACTOR = "admin-token"
#: How an API caller was authenticated (ApiCaller.via; the audit trail's `via`).
VIA_ADMIN_TOKEN = "admin-token"  # the shared admin token
VIA_ADMIN_IDENTITY = "admin-identity"  # a caller identity listed in admin_identities (automation)
VIA_TOKEN = "token"  # a person's own token (`tollgate users token NAME`)
VIA_OIDC = "oidc"  # a person's OpenID Connect token, verified against the provider's keys
VIA_CERTIFICATE = "mtls"  # a person's client certificate, mapped by person_identities


@dataclass(frozen=True)
class ApiCaller:
    """The authenticated caller of an admin or approval RPC."""

    #: What the caller acts and is recorded as: a person's name, `admin-token`, or an admin identity.
    name: str
    #: How it was authenticated (VIA_*).
    via: str
    #: A person (their own credential); False for automation (the admin token, an admin identity).
    person: bool
    #: May use AdminService (status, kill switches, spend, the fleet): the admin token and admin identities.
    admin: bool
    #: The transport's peer (e.g. ipv4:127.0.0.1:50312), for the audit trail.
    peer: str = ""
    #: A person's groups, as their console account or their OpenID Connect token gives them: a `group:NAME`
    #: approver counts them as approver_groups' members count.
    groups: tuple[str, ...] = ()

    def logged(self) -> str:
        """How the server's log names the caller."""
        if self.via == VIA_ADMIN_TOKEN:
            return f"admin token, peer {self.peer}"
        if self.via == VIA_ADMIN_IDENTITY:
            return f"admin identity {self.name}, peer {self.peer}"
        return f"{self.name} ({self.via}), peer {self.peer}"


def parse_person_identities(raw: Any) -> dict[str, str]:
    """The person_identities configuration: caller identity (a client certificate's spiffe://..., dns:NAME or
    cn:NAME; uid:N of a Unix-socket peer) → the person it authenticates. IdentityConfigError naming the key."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise IdentityConfigError(f"person_identities: must map caller identities to person names, got {raw!r}")
    found: dict[str, str] = {}
    for ident, person in raw.items():
        if not isinstance(ident, str) or not valid_caller_id(ident) or ident.startswith("jwt:"):
            raise IdentityConfigError(
                f"person_identities: {ident!r} is not a certificate or Unix-socket identity (spiffe://..., "
                "dns:NAME, cn:NAME, uid:N); people's tokens are issued with `tollgate users token NAME`")
        if (not isinstance(person, str) or not person or person != person.strip() or not person.isprintable()
                or person == ADMIN_TOKEN_ACTOR or person.startswith("group:")):
            raise IdentityConfigError(f"person_identities.{ident}: {person!r} is not a person's name")
        found[ident] = person
    return found
