r"""The one redaction point: every secret the process was given, removed from any text.

Passwords, tokens and store-URL passwords are remembered here when they are given (in
:class:`~mailtether.ImapSettings`, a store URL, :class:`~mailtether.SmtpNotifier`). Every
outward channel passes through :func:`redact`: the exceptions mailtether raises, the log
records of its loggers and of the imapclient/imaplib trace, status reasons (and so
notifications), the command line's text and JSON. Each secret is removed in every form it
can take on the wire or in text:

- as it is, which also covers an IMAP literal (``{n}`` and the raw bytes) and POP3's
  ``PASS`` line;
- IMAP-quoted (``"`` and ``\`` escaped), and either form as Python's ``repr`` of a str or
  bytes shows it (imaplib's trace logs the lines it sends as ``bytes`` reprs), and as JSON
  escapes it;
- percent-encoded (upper and lower case hex, ``+`` for a space or not), as in a URL;
- in base64, wherever it sits in the encoded string: that covers the SASL strings of
  ``AUTHENTICATE PLAIN``, ``XOAUTH2`` and ``OAUTHBEARER`` (the parts of the encoding that
  depend only on the secret's bytes, at each of the three alignments, standard and
  URL-safe alphabets).

A secret shorter than :data:`SHORTEST` characters is not remembered: it would be found by
chance in any text, and cannot be told from it. What a handler logs itself is not the
library's to see.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = [
    "REDACTED",
    "SHORTEST",
    "redact",
    "redact_values",
    "redacting_logger",
    "remember_secret",
    "retire_secret",
]

SHORTEST: Final = 4
"""Secrets shorter than this (in characters) are not remembered."""

REDACTED: Final = "***"
"""What a secret is replaced with."""

_MOST: Final = 4096
"""Retired secrets kept (see :func:`retire_secret`); the oldest are let go past this."""


class _Secrets:
    """The secrets remembered, and their forms by their first characters.

    Finding them is one pass over the text: at each position, the forms that start with the
    next :data:`SHORTEST` characters (a dictionary look-up) are tried, longest first. It
    costs the same with one secret or thousands (a fleet's passwords), and remembering one
    more costs only its own forms.

    A secret is kept for as long as the process runs, unless it is retired (a token a source
    has replaced): the :data:`_MOST` retired last are kept, older ones are let go. Tokens
    rotate for ever; what is given, and what is in use, stays.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, list[str]] = {}  # secret -> its forms
        self._retired: dict[str, None] = {}  # secrets no longer in use, oldest first
        self._by_head: dict[str, list[str]] = {}  # first characters -> forms, longest first
        self._uses: dict[str, int] = {}  # form -> how many secrets have it

    def remember(self, secret: str) -> None:
        if len(secret) < SHORTEST:
            return
        with self._lock:
            if secret in self._secrets:
                self._retired.pop(secret, None)  # in use again
                return
            forms = sorted({f for f in _forms(secret) if len(f) >= SHORTEST}, key=len)
            self._secrets[secret] = forms
            for form in forms:
                self._file(form)

    def retire(self, secret: str) -> None:
        with self._lock:
            if secret not in self._secrets or secret in self._retired:
                return
            self._retired[secret] = None
            while len(self._retired) > _MOST:
                oldest = next(iter(self._retired))
                del self._retired[oldest]
                self._let_go(self._secrets.pop(oldest))

    def _file(self, form: str) -> None:
        self._uses[form] = self._uses.get(form, 0) + 1
        heads = self._by_head.setdefault(form[:SHORTEST], [])
        if form not in heads:
            heads.append(form)
            heads.sort(key=len, reverse=True)

    def _let_go(self, forms: list[str]) -> None:
        for form in forms:
            left = self._uses.pop(form) - 1
            if left:
                self._uses[form] = left
                continue
            heads = self._by_head.get(form[:SHORTEST])
            if heads is not None and form in heads:
                heads.remove(form)
                if not heads:
                    del self._by_head[form[:SHORTEST]]

    def redact(self, text: str) -> str:
        by_head = self._by_head
        if not by_head or len(text) < SHORTEST:
            return text
        pieces: list[str] = []
        start = position = 0
        last = len(text) - SHORTEST
        while position <= last:
            forms = by_head.get(text[position : position + SHORTEST])
            if forms is not None:
                for form in forms:
                    if text.startswith(form, position):
                        pieces += (text[start:position], REDACTED)
                        position = start = position + len(form)
                        break
                else:
                    position += 1
            else:
                position += 1
        if not pieces:
            return text
        pieces.append(text[start:])
        return "".join(pieces)

    def snapshot(self) -> tuple[dict[str, list[str]], list[str]]:
        """What is remembered now (for tests: :meth:`restore` goes back to it)."""
        with self._lock:
            return dict(self._secrets), list(self._retired)

    def restore(self, snapshot: tuple[dict[str, list[str]], list[str]]) -> None:
        secrets, retired = snapshot
        with self._lock:
            self._secrets = dict(secrets)
            self._retired = dict.fromkeys(retired)
            self._by_head = {}
            self._uses = {}
            for forms in self._secrets.values():
                for form in forms:
                    self._file(form)


_SECRETS: Final = _Secrets()


def remember_secret(secret: str | bytes | None) -> None:
    """Remember *secret*: from now on :func:`redact` removes it, in every form.

    It is kept for as long as the process runs (unless retired; remembered again, it is in
    use again).
    """
    if isinstance(secret, bytes):
        secret = secret.decode("utf-8", "replace")
    if secret:
        _SECRETS.remember(secret)


def retire_secret(secret: str | None) -> None:
    """*secret* (remembered) is no longer in use: a token its source has replaced.

    It is still redacted, until 4,096 secrets retired after it (``_MOST``): then it is let
    go, so that a process renewing tokens for ever does not keep every one. Only what a
    source replaced is ever let go: a password, a client secret, a token in use never are.
    """
    if secret:
        _SECRETS.retire(secret)


def redact(text: str) -> str:
    """*text* with every remembered secret, in every form, replaced by ``***``."""
    return _SECRETS.redact(text)


def _forms(secret: str) -> Iterable[str]:
    """Every form *secret* can take in text (see the module's docstring)."""
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    raw = secret.encode("utf-8", "surrogatepass")
    # What a library's decoding of the server's bytes leaves of it (imapclient decodes as
    # ASCII and drops the rest; others replace each byte, or read Latin-1), and what a
    # .strip() of an answer leaves.
    decoded = {
        raw.decode("ascii", "ignore"),
        raw.decode("ascii", "replace"),
        raw.decode("latin-1"),
        secret.strip(),
        secret.rstrip(),
        secret.lstrip(),
    }
    for plain in {
        secret,
        quoted,
        *decoded,
        *(d.replace("\\", "\\\\").replace('"', '\\"') for d in decoded),
    }:
        yield plain
        yield repr(plain)[1:-1]
        yield repr(plain + "'\"")[1:-4]  # in a repr that had to escape its quotes
        as_bytes = plain.encode("utf-8", "surrogatepass")
        yield repr(as_bytes)[2:-1]
        yield repr(as_bytes + b"'\"")[2:-4]
        yield json.dumps(plain)[1:-1]
        yield json.dumps(plain, ensure_ascii=False)[1:-1]
    for encoded in (quote(secret, safe=""), quote_plus(secret, safe="")):
        yield encoded
        yield re.sub(r"%[0-9A-F]{2}", lambda escape: escape[0].lower(), encoded)
    yield from _base64_cores(secret.encode("utf-8", "surrogatepass"))


def _base64_cores(data: bytes) -> Iterable[str]:
    """The parts of any base64 text holding *data* that depend on *data* alone.

    At offset *k* (mod 3) in the encoded bytes, character *i* of the encoding covers bits
    ``6i .. 6i+6``; those within the secret's bits ``8k .. 8(k+n)`` are the same whatever
    surrounds it.
    """
    for offset in range(3):
        padded = b"\0" * offset + data
        first = -(-8 * offset // 6)  # ceil
        last = 8 * (offset + len(data)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            yield encode(padded).decode("ascii")[first:last]


def redact_values(data: object) -> object:
    """*data* (JSON-like) with :func:`redact` applied to every string in it but the keys.

    For JSON output: redacting the dumped text could replace a secret that happens to be a
    key or part of a number, and leave JSON that no longer parses.
    """
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_values(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_values(value) for value in data]
    return data


class _RedactingFilter(logging.Filter):
    """Rewrites a record's message with every secret removed (arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it, as logging does
            record.msg, record.args = redact(str(record.msg)), None
            return True
        cleaned = redact(message)
        if cleaned is not message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
        return True


_FILTER: Final = _RedactingFilter()


def redacting_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, whose records have every secret removed."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
