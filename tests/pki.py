"""A throwaway certificate authority for TLS and mTLS tests: real X.509 files written with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk (PEM)."""

    cert: Path
    key: Path

    def pair(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) as grpc.ssl_channel_credentials wants them."""
        return self.key.read_bytes(), self.cert.read_bytes()


class TestCA:
    """A CA that issues server certificates (DNS/IP SANs) and client certificates (URI SANs such as SPIFFE IDs)."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "tollgate test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._subject = subject
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name.replace(' ', '-')}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, name: str = "localhost") -> Issued:
        """A server certificate for localhost and 127.0.0.1."""
        sans: list[x509.GeneralName] = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self._issue(name, sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, uri: str, *, file_name: str | None = None, also: tuple[str, ...] = ()) -> Issued:
        """A client certificate whose URI SAN is uri (e.g. spiffe://acme/agents/code-reviewer), then the URIs in
        also (a certificate that names several identities, as an attacker's would)."""
        return self._issue(file_name or uri.rsplit("/", 1)[-1],
                           [x509.UniformResourceIdentifier(u) for u in (uri, *also)], ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(self, name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued
