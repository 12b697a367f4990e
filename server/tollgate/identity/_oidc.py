"""An OpenID Connect provider as Tollgate uses it: its discovery document and keys, the authorization-code
flow's two requests (the browser's redirect, the code exchange), and the verification of the ID tokens it issues.

The discovery document and the JWKS are fetched through tollgate.net.HttpClient and cached (metadata_ttl); a token
signed with a kid the cached JWKS does not hold makes one refetch (keys rotate), at most every KEYS_REFETCH_SECONDS
so that tokens with made-up kids cannot make us hammer the provider. A token is accepted only when:
- its alg is in the allow-list (asymmetric only: `none` and every HS* are never accepted, so a public key can
  never be used as an HMAC secret) and matches the type of the key its kid names;
- its signature verifies against that key, iss is the issuer, aud names the client (or the API's audience), and
  a token for several audiences names this client as its azp;
- exp, nbf and iat hold on the Clock with the allowed skew;
- for a sign-in, its nonce is the one this browser's pre-session sent (constant-time compare).
Nothing here is gRPC or HTTP-server code: the console (console/_oidc.py) and the API (api/_access.py) use it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt

from tollgate.clock import Clock, SystemClock
from tollgate.net import HttpOptions, RequestFailed

#: Signature algorithms a provider's token may use: asymmetric only. HS* would let a public key (which anyone
#: holds) serve as the HMAC secret, and `none` is no signature at all.
ASYMMETRIC = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
              "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP"}
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256")
#: Seconds between JWKS refetches caused by an unknown kid.
KEYS_REFETCH_SECONDS = 10.0
#: Largest discovery document, JWKS or token answer read (bytes).
MAX_DOCUMENT = 256 * 1024
#: Seconds one request to the provider may take.
HTTP_TIMEOUT = 10.0
#: Longest token accepted (characters): an ID token is a few kB.
MAX_TOKEN = 16 * 1024
#: Most groups taken from the groups claim, and the longest name (a person's or a group's) kept.
MAX_GROUPS = 256
MAX_NAME = 128


class OidcConfigError(ValueError):
    """An `oidc` setting that cannot be used (the message names the key)."""


class OidcError(ValueError):
    """A token, an answer or a flow step the provider gave that is refused; the message says why (never the
    token)."""


@dataclass(frozen=True)
class OidcSettings:
    """The `oidc` section: which provider, as which client, and how its tokens are read."""

    #: The provider's issuer URL (its discovery document is ISSUER/.well-known/openid-configuration).
    issuer: str
    #: This console's client id at the provider (the aud of its ID tokens).
    client_id: str
    #: The client secret (read from client_secret_file); "" for a public client (PKCE alone).
    client_secret: str = ""
    #: The console's path the provider redirects back to (registered at the provider with the console's URL).
    redirect_path: str = "/signin/oidc/callback"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    #: The claim holding the person's groups (a list of strings, or one string), and the one naming them.
    groups_claim: str = "groups"
    name_claim: str = "email"
    #: Seconds of clock difference allowed on exp, nbf and iat.
    clock_skew: float = 60.0
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    #: Another aud accepted on the API besides client_id (an access token's audience); "" accepts client_id only.
    audience: str = ""
    #: PEM CA bundle for a provider with a private CA; "" trusts the system's.
    ca_file: str = ""
    #: Seconds the discovery document and the keys are kept before they are fetched again.
    metadata_ttl: float = 3600.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, where: str = "oidc") -> OidcSettings:
        known = {f for f in cls.__dataclass_fields__ if f != "client_secret"} | {"client_secret_file"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise OidcConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        values = dict(raw)
        secret_file = values.pop("client_secret_file", "")
        for key in ("issuer", "client_id"):
            if not isinstance(values.get(key), str) or not values[key]:
                raise OidcConfigError(f"{where}.{key}: required")
        issuer = values["issuer"]
        parts = urlsplit(issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise OidcConfigError(f"{where}.issuer: {issuer!r} must be an https:// URL (http:// only for a local "
                                  "test provider)")
        for key in ("scopes", "algorithms"):
            if key in values:
                if not isinstance(values[key], list) or not all(isinstance(v, str) and v for v in values[key]):
                    raise OidcConfigError(f"{where}.{key}: must be a list of names")
                values[key] = tuple(values[key])
        for alg in values.get("algorithms", DEFAULT_ALGORITHMS):
            if alg not in ASYMMETRIC:
                raise OidcConfigError(f"{where}.algorithms: {alg!r} is not allowed (asymmetric only: "
                                      f"{', '.join(ASYMMETRIC)}; never none or HS*)")
        if "openid" not in values.get("scopes", ("openid",)):
            raise OidcConfigError(f"{where}.scopes: must include openid")
        redirect = values.get("redirect_path", "/signin/oidc/callback")
        if not isinstance(redirect, str) or not redirect.startswith("/") or redirect.startswith("//"):
            raise OidcConfigError(f"{where}.redirect_path: must be a path on the console, such as "
                                  "/signin/oidc/callback")
        for key in ("clock_skew", "metadata_ttl"):
            if key in values:
                number = values[key]
                if not isinstance(number, int | float) or not math.isfinite(number) or not 0 <= number <= 86400:
                    raise OidcConfigError(f"{where}.{key}: must be a number of seconds from 0 to 86400")
                values[key] = float(number)
        if secret_file:
            try:
                values["client_secret"] = Path(str(secret_file)).read_text().strip()
            except OSError as exc:
                raise OidcConfigError(f"{where}.client_secret_file: cannot read {secret_file} ({exc.strerror})") \
                    from exc
        try:
            return cls(**values)
        except TypeError as exc:
            raise OidcConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class SignedIn:
    """Who an ID token names: the person's name and groups as the configured claims give them."""

    name: str
    groups: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcProvider:
    """One provider: discovery and keys (cached), the flow's requests, token verification."""

    def __init__(self, settings: OidcSettings, *, clock: Clock = SystemClock(), http: Any = None) -> None:
        self.settings = settings
        self.clock = clock  # exp, nbf and iat are held against it
        self._http = http  # a tollgate.net.HttpClient; made on first use
        self._metadata: tuple[dict[str, Any], float] | None = None  # (document, monotonic expiry)
        self._keys: tuple[dict[str, jwt.PyJWK], float] | None = None
        self._refetched_at = -math.inf  # monotonic time of the last unknown-kid refetch
        self._lock = asyncio.Lock()

    # -- the provider's documents ------------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (OidcError when it cannot be had or names another issuer)."""
        if self._metadata is not None and time.monotonic() < self._metadata[1]:
            return self._metadata[0]
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url, "discovery document")
        if document.get("issuer") != self.settings.issuer:
            raise OidcError(f"the discovery document at {url} names issuer {document.get('issuer')!r}, not "
                            f"{self.settings.issuer!r} (oidc.issuer must be exactly the provider's issuer)")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(key), str) or not document[key].startswith(("https://", "http://")):
                raise OidcError(f"the discovery document at {url} has no usable {key}")
        self._metadata = (document, time.monotonic() + self.settings.metadata_ttl)
        return document

    async def _key(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            keys = await self._jwks(refresh=False)
            if kid not in keys and time.monotonic() - self._refetched_at >= KEYS_REFETCH_SECONDS:
                self._refetched_at = time.monotonic()
                keys = await self._jwks(refresh=True)  # the provider may have rotated its keys
        if kid not in keys:
            raise OidcError(f"kid {kid[:64]!r} is not one of the provider's keys ({', '.join(sorted(keys)) or 'none'})")
        return keys[kid]

    async def _jwks(self, *, refresh: bool) -> dict[str, jwt.PyJWK]:
        if not refresh and self._keys is not None and time.monotonic() < self._keys[1]:
            return self._keys[0]
        document = await self._get_json((await self.metadata())["jwks_uri"], "JWKS")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document.get("keys"), list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key of a type this PyJWT cannot use is no key of ours
        self._keys = (keys, time.monotonic() + self.settings.metadata_ttl)
        return keys

    # -- the flow ----------------------------------------------------------------------------------------

    async def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        endpoint = (await self.metadata())["authorization_endpoint"]
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes), "state": state,
                           "nonce": nonce, "code_challenge": pkce_challenge(verifier),
                           "code_challenge_method": "S256"})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange(self, code: str, *, redirect_uri: str, verifier: str) -> str:
        """The ID token the provider gives for an authorization code (OidcError when it gives none)."""
        endpoint = (await self.metadata())["token_endpoint"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.settings.client_id, "code_verifier": verifier}
        if self.settings.client_secret:
            form["client_secret"] = self.settings.client_secret  # client_secret_post
        answer = await self._request("POST", endpoint, "token endpoint", body=urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Accept": "application/json"})
        token = answer.get("id_token")
        if not isinstance(token, str) or not token:
            raise OidcError(f"the token endpoint gave no id_token ({str(answer.get('error', 'no error'))[:100]})")
        return token

    # -- tokens ------------------------------------------------------------------------------------------

    async def verify(self, token: str, *, nonce: str | None, audiences: Sequence[str] = ()) -> SignedIn:
        """Who an ID token names, after every check in the module docstring (OidcError saying which failed).
        nonce: the sign-in's (required then); None for a token presented to the API (no flow to bind it to)."""
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise OidcError("not a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError(f"cannot read the token's header ({exc})") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise OidcError(f"alg {str(alg)[:20]!r} is not allowed (allowed: {', '.join(self.settings.algorithms)})")
        if not isinstance(kid, str) or not kid:
            raise OidcError("the token names no kid")
        key = await self._key(kid)
        if key.key_type != ASYMMETRIC[alg]:
            raise OidcError(f"alg {alg} does not go with key {kid!r} (a {key.key_type} key)")
        wanted = [self.settings.client_id, *audiences]
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=wanted, issuer=self.settings.issuer,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise OidcError(str(exc)) from None
        self._check_times(claims)
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") not in wanted:
            # OIDC Core 3.1.3.7: a token for several audiences says which party it was issued to.
            raise OidcError("the token names several audiences and no azp that is this client")
        if nonce is not None:
            given = claims.get("nonce")
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
                raise OidcError("nonce does not match this sign-in's (a token from another sign-in, or replayed)")
        return self._person(claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, skew = self.clock.time(), self.settings.clock_skew
        for name in ("exp", "iat", "nbf"):
            if name in claims and (not isinstance(claims[name], int | float) or isinstance(claims[name], bool)):
                raise OidcError(f"{name} must be a number")
        if claims["exp"] + skew <= now:
            raise OidcError("the token has expired (exp)")
        if claims["iat"] - skew > now:
            raise OidcError("the token was issued in the future (iat)")
        if "nbf" in claims and claims["nbf"] - skew > now:
            raise OidcError("the token is not valid yet (nbf)")

    def _person(self, claims: Mapping[str, Any]) -> SignedIn:
        name = claims.get(self.settings.name_claim)
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
            raise OidcError(f"the token's {self.settings.name_claim} claim names no person")
        raw = claims.get(self.settings.groups_claim, [])
        groups = [raw] if isinstance(raw, str) else raw
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise OidcError(f"the token's {self.settings.groups_claim} claim is not a list of group names")
        kept = tuple(dict.fromkeys(g for g in groups if g and len(g) <= MAX_NAME and g.isprintable()))
        return SignedIn(name=name, groups=kept[:MAX_GROUPS], claims=dict(claims))

    # -- HTTP --------------------------------------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        return await self._request("GET", url, what, headers={"Accept": "application/json"})

    async def _request(self, method: str, url: str, what: str, *, body: bytes | None = None,
                       headers: Mapping[str, str]) -> dict[str, Any]:
        if self._http is None:
            from tollgate.net import HttpClient

            self._http = HttpClient(HttpOptions(ca_file=self.settings.ca_file))
        try:
            answer = await asyncio.to_thread(self._http.request, method, url, timeout=HTTP_TIMEOUT, body=body,
                                             headers=headers, read_limit=MAX_DOCUMENT)
        except RequestFailed as exc:
            raise OidcError(f"the provider's {what} ({url}) cannot be reached: {exc}") from None
        if not answer.ok or answer.truncated:
            raise OidcError(f"the provider's {what} ({url}) answered {answer.status} {answer.reason}"
                            f"{' (too large)' if answer.truncated else ''}")
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise OidcError(f"the provider's {what} ({url}) is not JSON") from None
        if not isinstance(document, dict):
            raise OidcError(f"the provider's {what} ({url}) is not a JSON object")
        return document

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
