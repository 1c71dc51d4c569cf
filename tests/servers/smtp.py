"""An SMTP server for tests: aiosmtpd with replies scripted per recipient and for DATA."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

from servers import free_port, tls

__all__ = ["Scripted", "smtp_server"]


class Scripted:
    """An aiosmtpd handler: replies per recipient (``rcpt``) and to DATA (``data``)."""

    def __init__(self) -> None:
        self.rcpt: dict[str, str] = {}
        self.data = "250 OK"
        self.received: list[tuple[str, tuple[str, ...], bytes]] = []
        self.logins: list[tuple[str, str]] = []
        self.port = 0  # set by whoever starts the server, for examples that want it here

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        reply = self.rcpt.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.data.startswith("250"):
            self.received.append(
                (envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content))
            )
        return self.data


@contextlib.contextmanager
def smtp_server(
    handler: Scripted,
    *,
    ca: tls.TestCA | None = None,
    password: str | None = None,
    port: int | None = None,
) -> Iterator[int]:
    """aiosmtpd on *port* (default a free one); *ca*: STARTTLS required; *password*: AUTH."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    options: dict[str, object] = {}
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(ca.cert_pem), str(ca.key_pem))
        options.update(tls_context=context, require_starttls=True)
    if password is not None:

        def check(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            login = (auth_data.login.decode(), auth_data.password.decode())
            handler.logins.append(login)
            return AuthResult(success=login[1] == password)

        options.update(authenticator=check, auth_require_tls=ca is not None)
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), **options)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()
