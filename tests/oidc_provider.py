"""A STAND-IN OpenID Connect provider for tests (no real IdP here): a small real HTTP server with a discovery
document, a JWKS and real RS256 ID tokens, which checks the PKCE verifier and the client secret like a provider
does. What it signs next is set by each test (claims changed, or the whole token replaced)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID, CLIENT_SECRET = "tollgate-console", "s3cret-of-the-console"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class StandInProvider:
    """A stand-in OpenID Connect provider (not a real IdP): what it signs next is set by each test."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    kid: str = "k1"
    #: Flows begun: code → (nonce, code_challenge, redirect_uri).
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    nonces: list[str] = field(default_factory=list)
    #: How the next ID token is made: claims changed, or the whole token replaced.
    claims: dict[str, Any] = field(default_factory=dict)
    token: Callable[[dict[str, Any]], str] | None = None
    jwks_fetches: int = 0

    def rotate(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid

    def sign(self, claims: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.keys[self.kid], algorithm="RS256", headers={"kid": self.kid})

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": CLIENT_ID, "sub": "u-42", "email": "rita@example.com",
                  "groups": ["approver", "release-managers"], "iat": now, "exp": now + 300, "nonce": nonce,
                  **self.claims}
        return self.token(claims) if self.token else self.sign(claims)

    def jwks(self) -> dict[str, Any]:
        self.jwks_fetches += 1
        found = []
        for kid, key in self.keys.items():
            numbers = key.public_key().public_numbers()
            found.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                          "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                          "e": b64(numbers.e.to_bytes(3, "big"))})
        return {"keys": found}


def _handler(idp: StandInProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, doc: dict[str, Any], status: int = 200) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json({"issuer": idp.url, "authorization_endpoint": f"{idp.url}/authorize",
                            "token_endpoint": f"{idp.url}/token", "jwks_uri": f"{idp.url}/jwks"})
            elif url.path == "/jwks":
                self._json(idp.jwks())
            elif url.path == "/authorize":
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                assert q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
                assert q["response_type"] == "code" and "openid" in q["scope"].split()
                code = secrets.token_urlsafe(16)
                idp.codes[code] = (q["nonce"], q["code_challenge"], q["redirect_uri"])
                idp.nonces.append(q["nonce"])
                self.send_response(302)
                self.send_header("Location", f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json({"error": "not_found"}, 404)

        def do_POST(self) -> None:
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
            flow = idp.codes.pop(form.get("code", ""), None)
            if flow is None or form.get("client_secret") != CLIENT_SECRET or form.get("client_id") != CLIENT_ID:
                self._json({"error": "invalid_grant"}, 400)
                return
            nonce, challenge, redirect_uri = flow
            verifier = form.get("code_verifier", "")
            if b64(hashlib.sha256(verifier.encode()).digest()) != challenge or form["redirect_uri"] != redirect_uri:
                self._json({"error": "invalid_grant", "error_description": "PKCE"}, 400)
                return
            self._json({"access_token": "opaque", "token_type": "Bearer", "id_token": idp.id_token(nonce)})

    return Handler


def running_provider() -> Generator[StandInProvider, None, None]:
    """A stand-in provider serving on a free loopback port until the generator is closed."""
    provider = StandInProvider()
    provider.rotate("k1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
