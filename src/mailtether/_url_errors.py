"""URLs with a password in them, read and shown so that no message ever carries the password.

Every URL mailtether takes may hold ``user:password@`` (``imaps://``, ``pop3s://``,
``redis://``, ``postgresql://`` …), and people paste passwords into them unencoded. urllib
then reads a password with a ``/`` in it as the start of the path and quotes its first half in
"Port could not be cast to integer value as 'hunter2'". Two helpers keep that from happening:

- :func:`redact` — the URL with the whole password replaced by ``***``, however it is
  written: the user information is everything between ``scheme://`` and the *last* ``@``.
- :func:`split_url` — :func:`urllib.parse.urlsplit`, after checks that make its ``hostname``,
  ``port``, ``username`` and ``password`` safe to read and right; a URL that fails them is a
  :class:`~mailtether.ConfigError` that names the part, shows the URL redacted and says what
  to percent-encode. urllib's own messages are never passed on, nor chained.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

from mailtether._errors import ConfigError
from mailtether._redaction import remember_secret

__all__ = ["redact", "split_url"]

_SCHEME: Final = re.compile(r"[\x00-\x20]*[A-Za-z][A-Za-z0-9+.\-]*:")
_QUERY_PASSWORD: Final = re.compile(r"(?i)(password=)[^&#\s]*")
_AUTHORITY_END: Final = re.compile(r"[/?#]")
_UNCLEAR_USER: Final = frozenset("/?#[]")
"""A "user name" holding one of these is a broken URL: it is not shown."""
_ESCAPES: Final = {
    "/": "%2F",
    "?": "%3F",
    "#": "%23",
    "@": "%40",
    "[": "%5B",
    "]": "%5D",
    "%": "%25",
    " ": "%20",
}
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SPACES: Final = frozenset(" \t\n\v\f\r")
_C0_OR_SPACE: Final = "".join(map(chr, range(0x21)))


# -- showing a URL ---------------------------------------------------------------------------------


def redact(url: str) -> str:
    """Return *url* with any password replaced by ``***``, for repr and messages.

    The user information is everything between ``scheme://`` and the last ``@``, so a password
    holding an unencoded ``/ ? # @ :`` is hidden whole. A user name that is not plainly one
    (it holds ``/ ? # [ ]``) is hidden too; so is a port that is not a number (a password
    whose ``@`` is missing), and with it the rest of the URL. A ``password=`` parameter (a URL
    query, or a libpq ``key=value`` connection string) is hidden as well.

    Example:
        >>> redact("imaps://alice:pa/ss?w#rd@mail.example.com/INBOX")
        'imaps://alice:***@mail.example.com/INBOX'
    """
    start = url.find("://")
    if start < 0:
        scheme = _SCHEME.match(url)
        if scheme is None:  # a libpq "key=value" string, or no URL at all
            return _hide_query(url)
        head, rest = url[: scheme.end()], url[scheme.end() :]
        if "@" in rest:  # "scheme:user:password@host": no // to find the user part from
            return f"{head}***@{_hide_query(rest.rpartition('@')[2])}"
        return head + _hide_query(rest)
    head, rest = url[: start + 3], url[start + 3 :]
    if not _SCHEME.fullmatch(head[:-2]):  # no scheme before "://": what is it, then?
        head = "***://"
    if rest.startswith("/"):  # no authority at all (sqlite:///path): an @ is the path's
        return head + _hide_query(rest)
    userinfo, at, after = rest.rpartition("@")
    if at:
        return f"{head}{_hide_userinfo(userinfo)}@{_hide_query(after)}"
    end = _authority_end(rest)
    host, port = _host_and_port(rest[:end])
    if port is not None and not (port.isascii() and port.isdigit()):
        return f"{head}{host}:***"  # not a port: perhaps a password; what follows, perhaps too
    return head + rest[:end] + _hide_query(rest[end:])


def _hide_userinfo(userinfo: str) -> str:
    user, colon, _password = userinfo.partition(":")
    if any(character in _UNCLEAR_USER for character in user):
        return "***"
    return f"{user}:***" if colon else user


def _hide_query(text: str) -> str:
    return _QUERY_PASSWORD.sub(r"\1***", text)


def _authority_end(rest: str) -> int:
    found = _AUTHORITY_END.search(rest)
    return len(rest) if found is None else found.start()


def _host_and_port(hostport: str) -> tuple[str, str | None]:
    """Split ``host:port`` (``[v6]:port``); the port is ``None`` when there is no ``:``."""
    host, colon, port = hostport.rpartition(":")
    if not colon or "]" in port:  # no port, or the colon is inside an IPv6 address
        return hostport, None
    return host, port


# -- reading a URL ---------------------------------------------------------------------------------


def split_url(url: str, *, libpq: bool = False) -> SplitResult:
    """:func:`~urllib.parse.urlsplit` *url*, refusing what would be misread or quoted.

    Afterwards ``hostname``, ``port``, ``username`` and ``password`` can be read without an
    error, and the user information is exactly what precedes the host: an ``@`` anywhere
    after the host part is refused (it means an unencoded ``/ ? #`` in the password, or an
    unencoded ``@`` in the path or query; either way the URL cannot be read for sure).

    Args:
        url: The URL.
        libpq: Also refuse what libpq reads differently from urllib, or refuses quoting the
            password: an unencoded ``@`` in the user information (libpq ends it at the first
            ``@``), a space, a ``%`` that starts no ``%XX`` escape, and ``%00``.

    Raises:
        ConfigError: the URL cannot be read for sure; the message names the part, shows the
            URL with the password as ``***`` and says what to percent-encode. It holds no piece
            of the password, and chains no exception that does.
    """
    # As urlsplit reads it: without leading blanks and control characters, tabs or line breaks.
    url = url.lstrip(_C0_OR_SPACE)
    for character in "\t\r\n":
        url = url.replace(character, "")
    problem = _problem(url, libpq=libpq)
    if problem is None:
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:  # a case the checks above missed: say it without urllib's text
            problem = _unreadable(url)
        else:
            if parts.password:  # from now on no output of the process holds it
                remember_secret(parts.password)
                remember_secret(unquote(parts.password))
            return parts
    raise ConfigError(problem)


def _problem(url: str, *, libpq: bool) -> str | None:
    """What is wrong with *url*'s user information or port, or ``None``."""
    start = url.find("://")
    if start < 0 or url.startswith("/", start + 3):  # no authority (unix:///run/x@y/sock)
        return None
    rest = url[start + 3 :]
    end = _authority_end(rest)
    if "@" in rest[end:]:
        userinfo = rest.rpartition("@")[0]
        where, fix = _fix(userinfo, "/?#@[]")
        return (
            f"the {where} of {redact(url)} seems to hold an unencoded delimiter (an `@` "
            f"follows the host part): percent-encode {fix}; an `@` in the path or query, as %40"
        )
    userinfo, at, hostport = rest[:end].rpartition("@")
    if at:
        if libpq and "@" in userinfo:
            where, fix = _fix(userinfo, "@")
            return (
                f"the {where} of {redact(url)} holds an unencoded `@`, where PostgreSQL ends "
                f"the password: percent-encode {fix}"
            )
        if ("[" in userinfo or "]" in userinfo) and ("[" in rest[:end]) != ("]" in rest[:end]):
            where, fix = _fix(userinfo, "[]")
            return (
                f"the {where} of {redact(url)} holds an unpaired bracket, which URLs keep for "
                f"IPv6 hosts: percent-encode {fix}"
            )
        if _changes_under_nfkc(userinfo):
            where = _which(userinfo, _changes_under_nfkc)
            return (
                f"the {where} of {redact(url)} holds a character that Unicode normalization "
                "turns into a URL delimiter: percent-encode its non-ASCII characters as UTF-8 "
                "(urllib.parse.quote(text, safe=''))"
            )
        if libpq:
            libpq_problem = _libpq_problem(url, userinfo)
            if libpq_problem is not None:
                return libpq_problem
    _host, port = _host_and_port(hostport)
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        missing = (
            ""
            if at
            else f"; a password goes before the host: {redact(url[: start + 3])}user:password@host"
        )
        return (
            f"the port of {redact(url)} is not a number from 0 to 65535: write the port in "
            f"digits after the host, or leave it out{missing}"
        )
    return None


def _libpq_problem(url: str, userinfo: str) -> str | None:
    if any(character in _SPACES for character in userinfo):
        where, fix = _fix(userinfo, " ")
        return (
            f"the {where} of {redact(url)} holds a space, which PostgreSQL refuses in a URL: "
            f"percent-encode {fix}"
        )
    if _BAD_ESCAPE.search(userinfo):
        where = _which(userinfo, lambda text: bool(_BAD_ESCAPE.search(text)))
        return (
            f"the {where} of {redact(url)} holds a `%` that starts no %XX escape: "
            f"percent-encode `%` in the {where} as %25"
        )
    if "%00" in userinfo:
        where = _which(userinfo, lambda text: "%00" in text)
        return f"the {where} of {redact(url)} holds %00, which PostgreSQL refuses: take it out"
    return None


def _unreadable(url: str) -> str:
    return (
        f"the host of {redact(url)} is not a host name or a bracketed IPv6 address: write "
        "host, host:port or [v6address]:port, and percent-encode `[ ] @ / ? #` elsewhere"
    )


def _fix(userinfo: str, characters: str) -> tuple[str, str]:
    """(which part, how to fix it) for the *characters* found in user name and password."""
    user, _colon, password = userinfo.partition(":")
    parts, fixes = [], []
    for part, text in (("password", password), ("user name", user)):
        found = [c for c in characters if c in text and (c != "%" or _BAD_ESCAPE.search(text))]
        if found:
            parts.append(part)
            escapes = [f"`{c}` as {_ESCAPES[c]}" for c in found]
            escapes[0] = escapes[0].replace(" as ", f" in the {part} as ", 1)
            fixes.append(_and(escapes))
    if not parts:  # only possible for a broken path or query
        return "password", "`@` in the path or query as %40"
    return " and ".join(reversed(parts)), "; ".join(fixes)


def _which(userinfo: str, test: Callable[[str], bool]) -> str:
    """``"password"``, ``"user name"`` or both: the parts of *userinfo* that fail *test*."""
    user, _colon, password = userinfo.partition(":")
    parts = [part for part, text in (("user name", user), ("password", password)) if test(text)]
    return " and ".join(parts) or "user name and password"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _changes_under_nfkc(text: str) -> bool:
    """Whether urllib refuses *text* in a netloc (NFKC turns a character into a delimiter)."""
    if text.isascii():
        return False
    plain = text.replace("@", "").replace(":", "").replace("#", "").replace("?", "")
    normal = unicodedata.normalize("NFKC", plain)
    return normal != plain and any(c in normal for c in "/?#@:")
