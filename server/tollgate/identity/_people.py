"""People: who signs in to the console (a local account, an OpenID Connect provider, a trusted proxy), their
groups, and the password hashes local accounts keep.

A person's name comes from their credential, never from what they type into a form: an approval names the person
who decided it. Passwords are kept as scrypt hashes only (hashlib.scrypt, n=2**15, r=8, p=1, a 16-byte salt per
hash), compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: How a person signed in (Person.via): a local account, OpenID Connect, or a trusted reverse proxy.
VIA_LOCAL, VIA_OIDC, VIA_PROXY = "local", "oidc", "proxy"
#: A person's name: what approvals, kill switches and the audit record name (an e-mail address fits).
PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
#: A group name: what the console's roles and an approval's `group:NAME` approvers name.
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
#: scrypt's cost: 2**15 x 8 x 128 bytes = 32 MiB of memory and about 0.1 s per hash on this machine.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024  # above the 32 MiB the parameters need (hashlib's default cap is 32 MiB)
_SALT_BYTES = 16
_KEY_BYTES = 32
#: Longest password accepted (bytes, UTF-8): scrypt takes any length, but a megabyte form field is not a password.
MAX_PASSWORD_BYTES = 1024


@dataclass(frozen=True)
class Person:
    """Someone signed in: their name and groups as their credential gave them, and how they signed in."""

    name: str
    groups: tuple[str, ...]
    via: str


def valid_person_name(text: str) -> bool:
    return PERSON_NAME.fullmatch(text) is not None


def valid_group_name(text: str) -> bool:
    return GROUP_NAME.fullmatch(text) is not None


def hash_password(password: str) -> str:
    """The scrypt hash to store for password: `scrypt$N$r$p$SALT$KEY` (salt and key base64)."""
    if not password:
        raise ValueError("password: must not be empty")
    secret = password.encode()
    if len(secret) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password: at most {MAX_PASSWORD_BYTES} bytes")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)))


def verify_password(password: str, stored: str) -> bool:
    """Whether password hashes to stored (constant-time compare); False for a malformed stored hash."""
    secret = password.encode()
    if len(secret) > MAX_PASSWORD_BYTES:
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt" or int(n) > 2**20 or int(r) > 32 or int(p) > 4:
            return False
        expected = base64.b64decode(key, validate=True)
        found = _scrypt(secret, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(found, expected)


#: Verified when a name is not an account, so an unknown name costs what a wrong password does (no timing tells
#: which names exist).
DUMMY_HASH = "scrypt$32768$8$1$" + "A" * 22 + "==$" + "A" * 43 + "="


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=_KEY_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
