"""The local servers the executed examples of some docs pages talk to.

- docs/oauth2.md: ``local``, a token endpoint and an introspection endpoint
  (``tests/servers/oauth2.py``) and a Dovecot that checks every OAuth2 token there: the same
  test bed as ``tests/test_oauth2_listener.py``;
- docs/outbound.md: ``smtp``, an SMTP server (aiosmtpd) that keeps what it is sent;
- docs/listener.md: ``helpdesk``, a Dovecot with one mail waiting, named in the environment
  the quickstart reads (``HELPDESK_MAILBOX``, ``HELPDESK_STATE``);
- docs/notifications.md: ``webhook``, an HTTP server on 127.0.0.1 that keeps the JSON posted
  to it (``tests/servers/webhook.py``), and ``mail_relay``, an SMTP server of its own (the
  examples of docs/outbound.md count what ``smtp`` received).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import make_temp_dir, start_or_skip
from servers.dovecot import DovecotServer
from servers.oauth2 import OAuth2Server
from servers.smtp import Scripted, smtp_server
from servers.tls import make_ca
from servers.webhook import WebhookReceiver


@attrs.frozen
class LocalProvider:
    """What the examples need: the endpoints, one user's grant, and the IMAP/POP3 ports."""

    oauth2: OAuth2Server
    dovecot: DovecotServer
    user: str
    refresh_token: str

    @property
    def token_url(self) -> str:
        """The token endpoint (refresh and client-credentials grants)."""
        return self.oauth2.token_url

    @property
    def client_id(self) -> str:
        """The app the user's grant belongs to."""
        return self.oauth2.client_id

    @property
    def imap_port(self) -> int:
        """Dovecot's plain IMAP port on 127.0.0.1."""
        return self.dovecot.imap_port

    def deliver(self, subject: str) -> None:
        """A mail with *subject* arrives in the user's INBOX."""
        self.dovecot.append(self.user, f"Subject: {subject}\r\n\r\nHello\r\n".encode())

    def revoke(self) -> None:
        """The user withdraws the app's access: the grant and its tokens stop working."""
        self.oauth2.revoke(self.user, access_tokens=True)


@pytest.fixture(scope="session")
def local() -> Iterator[LocalProvider]:
    """The provider, started once for the page's examples (skipped or failed like the tests')."""
    import shutil

    directory = make_temp_dir("docs-ca")
    with OAuth2Server(token_lifetime=60.0) as oauth2:
        dovecot = start_or_skip("Dovecot", DovecotServer(make_ca(directory), oauth2=oauth2).start)
        try:
            user = dovecot.add_user()
            yield LocalProvider(oauth2, dovecot, user, oauth2.issue_refresh_token(user))
        finally:
            dovecot.stop()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def helpdesk() -> Iterator[DovecotServer]:
    """A mailbox with one mail, for docs/listener.md's quickstart to run as written."""
    import os
    import shutil

    directory = make_temp_dir("docs-helpdesk")
    dovecot = start_or_skip("Dovecot", DovecotServer(make_ca(directory)).start)
    saved = {name: os.environ.get(name) for name in ("HELPDESK_MAILBOX", "HELPDESK_STATE")}
    try:
        user = dovecot.add_user()
        dovecot.append(user, b"Subject: printer on fire\r\n\r\nHelp!\r\n")
        os.environ["HELPDESK_MAILBOX"] = (
            f"imap://{user}:{dovecot.password(user)}@127.0.0.1:{dovecot.imap_port}/INBOX"
            "?security=plain"
        )
        os.environ["HELPDESK_STATE"] = str(directory / "helpdesk.db")
        yield dovecot
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        dovecot.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _scripted_smtp() -> Iterator[Scripted]:
    handler = Scripted()
    with smtp_server(handler) as port:
        handler.port = port
        yield handler


@pytest.fixture(scope="session")
def smtp() -> Iterator[Scripted]:
    """An SMTP server (aiosmtpd) for docs/outbound.md's examples: ``port``, ``received``."""
    yield from _scripted_smtp()


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    """A webhook receiver for docs/notifications.md: ``url()``, ``received``, ``faults``."""
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def mail_relay() -> Iterator[Scripted]:
    """An SMTP server (aiosmtpd) for docs/notifications.md: ``port``, ``received``."""
    yield from _scripted_smtp()
