"""The SASL strings of OAuth2 logins, and which mechanism to use (IMAP, POP3, SMTP)."""

from __future__ import annotations

import base64
from collections.abc import Iterable

__all__ = ["ERROR_CHALLENGE_ANSWER", "oauth2_mechanism", "sasl_string"]


ERROR_CHALLENGE_ANSWER = {"XOAUTH2": "", "OAUTHBEARER": "AQ=="}
"""What a client sends back to a refused token's error challenge (a JSON status, base64),
so that the server gives its final NO: XOAUTH2 an empty line, OAUTHBEARER ``%x01``
(RFC 7628 3.2.3)."""


def oauth2_mechanism(auth: str, capabilities: Iterable[bytes]) -> str:
    """The mechanism for *auth*: OAUTHBEARER for ``"oauth2"`` where offered, else XOAUTH2.

    *capabilities* as IMAP says them (``b"AUTH=OAUTHBEARER"``).
    """
    offered = {capability.upper() for capability in capabilities}
    if auth == "oauthbearer" or (auth == "oauth2" and b"AUTH=OAUTHBEARER" in offered):
        return "OAUTHBEARER"
    return "XOAUTH2"


def sasl_string(mechanism: str, user: str, token: str) -> str:
    """The base64 initial response of *mechanism* (XOAUTH2, or OAUTHBEARER: RFC 7628)."""
    if mechanism == "OAUTHBEARER":
        identity = user.replace("=", "=3D").replace(",", "=2C")
        text = f"n,a={identity},\x01auth=Bearer {token}\x01\x01"
    else:
        text = f"user={user}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
