"""A throwaway certificate authority, and the server certificate Dovecot presents."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import trustme


@attrs.frozen
class TestCA:
    """A CA the tests trust, and files for a server certificate it issued for 127.0.0.1."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    other_ca_pem: Path
    """A second CA that issued nothing we serve: trusting only it must fail verification."""

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that verifies the test server's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        return context

    def wrong_context(self) -> ssl.SSLContext:
        """An SSL context that trusts another CA only: the server's certificate is refused."""
        return ssl.create_default_context(cafile=str(self.other_ca_pem))


def make_ca(directory: Path) -> TestCA:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = directory / "ca.pem"
    cert_pem = directory / "server.pem"
    key_pem = directory / "server.key"
    other_pem = directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server.private_key_pem.write_to_path(str(key_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    trustme.CA().cert_pem.write_to_path(str(other_pem))
    for path in (ca_pem, cert_pem, other_pem):
        path.chmod(0o644)
    key_pem.chmod(0o600)
    return TestCA(ca_pem, cert_pem, key_pem, other_pem)
