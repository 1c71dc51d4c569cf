"""Secrets never leave the process, in any form (issue 17): a property test of every channel.

Random secrets (8 to 24 characters from the whole printable range: quotes, backslashes,
``/?#@:%``, spaces, letters beyond ASCII) are used as the IMAP password, the XOAUTH2 token,
the POP3 password and a store URL's password; and (issue 19, section 8) as the secrets of the
OAuth2 token sources: the refresh token given, the client secret, the access tokens the
token endpoint hands out and the refresh token it rotates to (kept in the store), and the
token a ``--token-command`` prints. Servers that echo what they were sent — in the answer
that rejects the login, and in later answers of a session they accepted; a token endpoint
that quotes the request in its errors, or answers what is no OAuth2 answer — and a real
Dovecot that rejects them are driven through every way the library talks:

- exceptions: ``str``, ``repr``, ``args``, the traceback, and every exception chained to
  them (``__cause__``, ``__context__``);
- every log record at DEBUG (imaplib's protocol trace on), formatted with its traceback,
  and the exception object a record carries;
- status: the board's reasons, and what notifiers are told (an :class:`SmtpNotifier`'s
  mail too);
- the command line: ``check`` and ``status`` (the held messages too), text and ``--json``;
  and what :func:`mailtether.check` returns.

Every captured text is searched for the secret in each form it can take (:func:`_forms`:
literal, IMAP-quoted, as reprs of str and bytes — in either quotes, and in a repr again —,
JSON-escaped, percent-encoded, in the base64 of the PLAIN, XOAUTH2 and OAUTHBEARER strings,
in POP3's ``PASS`` line; and what trimming, or decoding its UTF-8 as ASCII or Latin-1, leaves
of it), for the secret inside any run of base64 in it, and for a piece of 8 characters of it
(what a length limit leaves). Each scenario also asserts that it really sent the secret (the
server received it, the error is the expected one, the server's words reached the status):
a test that never sends the secret proves nothing.

What this file found leaking (16 cases, 10 causes; all fixed since) is listed in
:data:`KNOWN_LEAKS` (scenario, channel, form): the main test of a scenario checks everything
else, and ``test_known_leak`` checks each of those cases on its own, so none comes back. What
it found in the token sources (section 8, fixed since) shows on every example of the test
that found it, which stays as its regression test: see :data:`TOKEN_LEAKS`.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import functools
import importlib
import io
import itertools
import json
import logging
import os
import re
import shlex
import socket
import ssl
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple
from unittest import mock
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, Phase, assume, given, reject, settings
from hypothesis import strategies as st

from helpers import eventually
from mailtether import (
    AuthenticationFailed,
    CheckReport,
    ClientCredentialsFlow,
    ConfigError,
    ConnectionLost,
    Fixed,
    FixedToken,
    FolderMissing,
    ImapConnection,
    ImapListener,
    ImapSettings,
    Keepalive,
    LoggingNotifier,
    MailServerError,
    MalformedReply,
    MemoryStore,
    Pop3Poller,
    RefreshTokenFlow,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StatusChange,
    StoreError,
    TokenRevoked,
    TokenSource,
    TokenUnavailable,
    check,
    store_from_url,
)
from mailtether._redaction import _SECRETS
from mailtether.cli._main import main
from mailtether.pop3._connection import Pop3Connection
from mailtether.testing import ScriptedImapServer
from scripted import Answer, LoopbackServer, Scripted
from servers.oauth2 import OAuth2Server

USER: Final = "mtuser"
HOST: Final = "127.0.0.1"
FOLDER: Final = "INBOX"
FAST: Final = Keepalive(noop_interval=5, idle_renewal=5, response_timeout=2)
_STEPS: Final = ("greeting", "capabilities", "starttls", "login", "select", "stat")
"""The names of ``check``'s steps that :func:`_check` reads (past TCP)."""

# -- secrets -----------------------------------------------------------------------------------

_STRUCTURE = "\"\\/?#@:%' []{}()<>&=+;,*"
"""What quoting escapes and URLs read as structure: drawn often."""
_LETTERS = "éßüñøłåçЖяΩ€漢字\u00a0\uff0f\U0001f511"
"""Letters (and a few signs) beyond ASCII, some that NFKC turns into ASCII."""


def _secrets(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """8 to 24 characters, no line break, not only white space."""
    return st.text(alphabet, min_size=8, max_size=24).filter(lambda text: bool(text.strip()))


_PRINTABLE_ASCII: Final = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ASCII_SECRETS: Final = _secrets(st.one_of(st.sampled_from(_STRUCTURE), _PRINTABLE_ASCII))
"""For IMAP LOGIN, which imaplib sends in ASCII only."""
SECRETS: Final = _secrets(
    st.one_of(
        st.sampled_from(_STRUCTURE),
        _PRINTABLE_ASCII,
        st.sampled_from(_LETTERS),
        # The whole range: every category but surrogates, control characters and line breaks.
        st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    )
)
"""The whole range (nearly always with a character beyond ASCII)."""
ANY_SECRETS: Final = st.one_of(ASCII_SECRETS, SECRETS)
"""Half ASCII (a LOGIN that reaches the server), half the whole range."""


def _examples(count: int) -> settings:
    """*count* secrets a test, none shrunk: a failing one is shown as drawn, with what leaked
    where (shrinking an example that runs servers took over five minutes, and a known leak
    fails at once); one that failed before is tried first."""
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )


CASES: Final = _examples(25)
"""The main tests: 25 secrets a scenario."""
SERVER_CASES: Final = _examples(10)
"""Against Dovecot (each failed login costs half a second there, in parallel): 10 secrets."""
LEAK_CASES: Final = _examples(5)
"""The tests of known leaks (expected to fail): a few secrets."""
FULL: Final = bool(os.environ.get("MAILTETHER_FULL"))
"""``MAILTETHER_FULL=1``: the OAuth2 tests draw many more examples."""
TOKEN_CASES: Final = _examples(25 if FULL else 3)
"""The OAuth2 tests: 4 secrets an example, a test per way to fail: 3 examples each (25)."""
SERVER_TOKEN_CASES: Final = _examples(25 if FULL else 5)
"""The OAuth2 tests against the mail servers: 5 examples each (25)."""
DOVECOT_TOKEN_CASES: Final = _examples(20 if FULL else 4)
"""Against Dovecot (each refused token costs half a second): 4 examples (20)."""
LONG_RUN_CASES: Final = _examples(10 if FULL else 5)
"""The long run (40 renewals an example): 5 examples (10)."""


def _pieces(text: str) -> set[str]:
    return {text[i : i + 4] for i in range(len(text) - 3)}


@functools.cache
def _corpus() -> str:
    """The source of the library, of what it calls, and of the tests: the words of its output.

    Messages, reprs and tracebacks (which quote source lines) are made of them.
    """
    import imaplib
    import poplib

    import imapclient

    import mailtether

    files = [Path(imaplib.__file__), Path(poplib.__file__), *Path(__file__).parent.glob("*.py")]
    for package in (mailtether, imapclient, *_optional("redis", "psycopg")):
        files += Path(package.__file__ or "").parent.rglob("*.py")
    return "\n".join(path.read_text("utf-8", "replace") for path in files)


@functools.cache
def _corpus_pieces() -> frozenset[str]:
    """Every 4 characters in a row that :func:`_corpus` holds (a sieve for :func:`_in_corpus`)."""
    corpus = _corpus()
    return frozenset({corpus[i : i + 4] for i in range(len(corpus) - 3)})


def _in_corpus(text: str) -> bool:
    """Whether *text* is in :func:`_corpus`: sieved by its pieces of 4 first (searching 5 MB
    for each piece of each secret took most of this file's time)."""
    pieces = _corpus_pieces()
    return all(text[i : i + 4] in pieces for i in range(len(text) - 3)) and text in _corpus()


def _optional(*names: str) -> list[Any]:
    found = []
    for name in names:
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(name))
    return found


def _usable(secret: str, *names: str) -> None:
    """Skip a secret that the output could hold without it having leaked.

    - It shares 4 characters with the fixed words around it: the user name, host, folder
      (and the Dovecot user), and the names of ``check``'s steps, which :func:`_check` reads.
    - A piece of 8 characters of it is in the source of the library or of what it calls:
      Hypothesis draws strings from the code too ("SourceState", "mailtether.listener"),
      which the output holds anyway (a repr, a logger's name, a traceback's source line).
    - It has ``TAG``, which :class:`Scripted` replaces with the command's tag in an answer.
    """
    words = (USER, HOST, FOLDER, *_STEPS, *names)
    vocabulary = set().union(*(_pieces(word) for word in words))
    assume(not (_pieces(secret) & vocabulary))
    assume(not any(_in_corpus(secret[i : i + 8]) for i in range(len(secret) - 7)))
    assume("TAG" not in secret)


# -- forms -------------------------------------------------------------------------------------

TRIMMED: Final = "white space at its ends trimmed"
DROPPED: Final = "UTF-8 decoded as ASCII, non-ASCII dropped"
REPLACED: Final = "UTF-8 decoded as ASCII, non-ASCII replaced"
PIECE: Final = "a piece (8+ characters) of"
SINGLE: Final = "single-quoted (' escaped)"


def _bases(secret: str) -> dict[str, str]:
    """The secret, and what quoting, trimming or a lossy decoding of its UTF-8 makes of it.

    The changed ones (a server's echo trimmed, or decoded as ASCII) only when as long as a
    secret: shorter remnants can be found by chance.
    """
    utf8 = secret.encode("utf-8", "surrogatepass")
    bases = {"literal": secret, "IMAP-quoted": secret.replace("\\", "\\\\").replace('"', '\\"')}
    for name, lossy in (
        (TRIMMED, secret.strip()),
        ("white space collapsed", " ".join(secret.split())),
        (DROPPED, utf8.decode("ascii", "ignore")),
        (REPLACED, utf8.decode("ascii", "replace")),
        ("UTF-8 decoded as Latin-1", utf8.decode("latin-1")),
    ):
        if len(lossy) >= 8 and lossy != secret:
            bases[name] = lossy
    return bases


def _forms(secret: str, user: str = USER) -> dict[str, str]:
    """Every form *secret* can take in text (of 4 characters or more), by name; the names of
    forms that are the same text are joined by `` = ``."""
    found: dict[str, str] = {}
    for label, plain in _bases(secret).items():
        data = plain.encode("utf-8", "surrogatepass")
        found[label] = plain
        # A repr escapes a quote only when the text around holds the other quote as well:
        # both ways, for str and bytes, and each inside a repr again.
        for kind, inner in (
            ("repr of str", repr(plain)[1:-1]),
            ("repr of bytes", repr(data)[2:-1]),
            (f"repr of str, {SINGLE}", repr("'\"" + plain)[4:-1]),
            (f"repr of bytes, {SINGLE}", repr(b"'\"" + data)[5:-1]),
        ):
            found[f"{label}, {kind}"] = inner
            found[f"{label}, {kind}, in a repr"] = repr(inner)[1:-1]
            found[f"{label}, {kind}, in a repr, {SINGLE}"] = repr("'\"" + inner)[4:-1]
        found[f"{label}, JSON"] = json.dumps(plain)[1:-1]
        found[f"{label}, JSON (ensure_ascii=False)"] = json.dumps(plain, ensure_ascii=False)[1:-1]
    for label, encoded in (
        ("percent-encoded", quote(secret, safe="")),
        ("quote_plus", quote_plus(secret, safe="")),
    ):
        found[label] = encoded
        found[f"{label}, lower-case hex"] = re.sub(
            r"%[0-9A-F]{2}", lambda escape: escape[0].lower(), encoded
        )
    sasl = {
        "PLAIN": f"\0{user}\0{secret}",
        "XOAUTH2": f"user={user}\x01auth=Bearer {secret}\x01\x01",
        "OAUTHBEARER": f"n,a={user},\x01auth=Bearer {secret}\x01\x01",
    }
    for mechanism, text in sasl.items():
        data = text.encode("utf-8", "surrogatepass")
        found[f"base64 of {mechanism}"] = base64.b64encode(data).decode("ascii")
        found[f"URL-safe base64 of {mechanism}"] = base64.urlsafe_b64encode(data).decode("ascii")
    found["POP3 PASS line"] = f"PASS {secret}"
    names: dict[str, list[str]] = {}
    for name, form in found.items():
        if len(form) >= 4:
            names.setdefault(form, []).append(name)
    return {" = ".join(named): form for form, named in names.items()}


def _plain(text: str) -> bool:
    return all(char.isascii() and (char.isalnum() or char == " ") for char in text)


def _windows(secret: str) -> dict[str, set[str]]:
    """Pieces of 8 characters of the secret (and of its lossy decodings), by base.

    What a length limit leaves of it (a line cut at 80 bytes). Pieces of fewer than 4
    distinct characters are left out (a table's padding is no secret), and so are pieces of
    ASCII letters, digits and spaces only, which the output can hold by chance (the digits
    of a time, of a float).
    """
    return {
        name: {
            piece
            for start in range(len(base) - 7)
            if len(set(piece := base[start : start + 8])) >= 4 and not _plain(piece)
        }
        for name, base in _bases(secret).items()
        if name != "IMAP-quoted"
    }


_BASE64_RUN: Final = re.compile(r"[A-Za-z0-9+/_-]{8,}")


def _in_base64(secret: str, text: str) -> bool:
    """Whether any run of base64 characters in *text*, at any alignment, decodes to it."""
    wanted = secret.encode("utf-8", "surrogatepass")
    for run in _BASE64_RUN.findall(text):
        standard = run.replace("-", "+").replace("_", "/")
        for start in range(4):
            part = standard[start:]
            part = part[: len(part) - len(part) % 4]
            try:
                if wanted in base64.b64decode(part):
                    return True
            except (binascii.Error, ValueError):
                continue
    return False


class Finding(NamedTuple):
    """A form of the secret found in a channel's text."""

    channel: str
    form: str
    excerpt: str

    def __str__(self) -> str:
        first, *others = self.form.split(" = ")
        also = f" (= {len(others)} other forms)" if others else ""
        return f"{self.channel}: {first}{also}: …{self.excerpt!r}…"


def _findings(secret: str, texts: list[tuple[str, str]], user: str = USER) -> list[Finding]:
    """Every form of *secret* each text shows."""
    forms = _forms(secret, user)
    windows = _windows(secret)
    found: list[Finding] = []
    for channel, text in texts:
        whole = len(found)
        for name, form in forms.items():
            where = text.find(form)
            if where >= 0:
                excerpt = text[max(0, where - 60) : where + len(form) + 20]
                found.append(Finding(channel, name, excerpt))
        if _in_base64(secret, text):
            found.append(Finding(channel, "base64 (a run of the text decoded)", text[:300]))
        if len(found) > whole:
            continue  # a whole form is there: its pieces say nothing more
        for name, pieces in windows.items():
            piece = next((piece for piece in pieces if piece in text), None)
            if piece is not None:
                where = text.find(piece)
                excerpt = text[max(0, where - 60) : where + 40]
                found.append(Finding(channel, f"{PIECE} {name}", excerpt))
                break
    return found


# -- capturing every channel -------------------------------------------------------------------

SHOWN: Final = "exception"
"""What a traceback shows of an exception: str, repr, args, and its chain."""
SUPPRESSED: Final = "exception context hidden by 'raise ... from None'"
"""``__context__`` that ``raise … from None`` hides from tracebacks (still on the object)."""
LOG: Final = "log"
LOGGED_EXCEPTION: Final = "log record's exc_info"
STATUS: Final = "status"
NOTIFICATION: Final = "notification"
CLI: Final = "command line"
REPORT: Final = "check report"
"""What :func:`mailtether.check` returns: its sentence, steps and JSON."""
SERVER_LOGGERS: Final = ("mail.log",)
"""The loggers of the test's own servers (aiosmtpd logs what it is sent): not the library's."""


class Capture(logging.Handler):
    """Every text the library lets out while it is installed, by channel."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        # The logger's name goes in the channel, not in the text: Hypothesis draws secrets
        # from the library's own words too, such as "listener".
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.texts: list[tuple[str, str]] = []
        self._guard = threading.Lock()

    def add(self, channel: str, text: str) -> None:
        with self._guard:
            self.texts.append((channel, text))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(SERVER_LOGGERS):
            return
        self.add(f"{LOG} {record.name}", self.format(record))
        if record.exc_info and record.exc_info[1] is not None:
            self.exception(record.exc_info[1], LOGGED_EXCEPTION)

    def exception(self, error: BaseException, channel: str = SHOWN) -> None:
        """The exception's texts, and those of every exception chained to it.

        What a traceback shows goes to *channel*; a ``__context__`` hidden by ``from None``
        (and what is chained to it) to :data:`SUPPRESSED`.
        """
        self.add(f"{channel}: traceback", "".join(traceback.format_exception(error)))
        seen: set[int] = set()
        todo: list[tuple[BaseException, str]] = [(error, channel)]
        while todo:
            current, where = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            name = type(current).__name__
            self.add(f"{where}: str({name})", str(current))
            self.add(f"{where}: repr({name})", repr(current))
            for argument in current.args:
                self.add(f"{where}: {name}.args", repr(argument))
                if isinstance(argument, str):
                    self.add(f"{where}: {name}.args", argument)
            if current.__cause__ is not None:
                todo.append((current.__cause__, f"{where}: __cause__"))
            if current.__context__ is not None:
                hidden = current.__suppress_context__
                todo.append((current.__context__, SUPPRESSED if hidden else where))

    def notifier(self, change: StatusChange) -> None:
        """A notifier (see :class:`mailtether.Notifier`): what it is told."""
        self.add(NOTIFICATION, str(change))
        self.add(NOTIFICATION, repr(change))
        self.add(NOTIFICATION, change.sentence())

    def board(self, board: StatusBoard) -> None:
        for status in board.snapshot():
            self.add(STATUS, status.reason)
            self.add(STATUS, repr(status))
            self.add(STATUS, json.dumps(status.to_dict()))

    def report(self, report: CheckReport) -> CheckReport:
        """What :func:`mailtether.check` tells its caller."""
        self.add(REPORT, report.sentence)
        self.add(REPORT, repr(report))
        self.add(REPORT, json.dumps(report.to_dict(), ensure_ascii=False))
        for step in report.steps:
            self.add(REPORT, step.detail)
        return report

    def cli(self, *argv: str) -> tuple[int, str]:
        """``mailtether *argv``: its exit code and output."""
        out = io.StringIO()
        code = main(list(argv), out=out)
        self.add(f"{CLI} {argv[0]}{' --json' if '--json' in argv else ''}", out.getvalue())
        return code, out.getvalue()

    @contextlib.contextmanager
    def raised(self, expected: type[BaseException]) -> Iterator[None]:
        """Capture what the block raises, which must be an *expected*."""
        with pytest.raises(expected) as caught:
            yield
        self.exception(caught.value)

    def findings(self, secret: str, user: str = USER) -> list[Finding]:
        with self._guard:
            texts = list(self.texts)
        return _findings(secret, texts, user)


@contextlib.contextmanager
def capturing() -> Iterator[Capture]:
    """A :class:`Capture` on the root logger at DEBUG, imaplib's trace on.

    Each example starts from the secrets remembered before it (so another example's secret
    cannot hide a form of this one), and they are forgotten after it.
    """
    capture = Capture()
    root = logging.getLogger()
    trace = logging.getLogger("imapclient.imaplib")
    levels = root.level, trace.level
    remembered = _SECRETS.snapshot()
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    trace.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(levels[0])
        trace.setLevel(levels[1])
        _SECRETS.restore(remembered)


# -- known leaks: how they are told apart ------------------------------------------------------


class Known(NamedTuple):
    """A leak found: in *scenario*, the channels starting with *channel* show *form*.

    *drive* shows it again with *secrets*, for its own (strict xfail) test.
    """

    scenario: str | tuple[str, ...]
    channel: str | tuple[str, ...]
    form: str | None  # a part of the form's name; None: any form
    what: str
    secrets: st.SearchStrategy[str]
    drive: Callable[[Capture, str], None] | None  # None: needs Dovecot (its own test)

    def explains(self, scenario: str, finding: Finding) -> bool:
        return (
            scenario in (self.scenario if isinstance(self.scenario, tuple) else (self.scenario,))
            and finding.channel.startswith(self.channel)
            and (self.form is None or self.form in finding.form)
        )


def _assert_clean(capture: Capture, secret: str, scenario: str, user: str = USER) -> None:
    """No form of *secret* in any channel, but the scenario's known leaks (:data:`KNOWN_LEAKS`,
    at the end)."""
    found = [
        finding
        for finding in capture.findings(secret, user)
        if not any(known.explains(scenario, finding) for known in KNOWN_LEAKS)
    ]
    assert not found, f"the secret {secret!r} leaked:\n" + "\n".join(map(str, found))


class Leaked(AssertionError):
    """A known leak is still there (what its xfail expects; any other failure is a failure)."""


def _assert_not_known(capture: Capture, secret: str, known: Known, user: str = USER) -> None:
    """The known leak is not there (any more)."""
    scenario = known.scenario if isinstance(known.scenario, str) else known.scenario[0]
    found = [f for f in capture.findings(secret, user) if known.explains(scenario, f)]
    if found:
        raise Leaked(f"{known.what}; the secret {secret!r}:\n" + "\n".join(map(str, found)))


# -- driving a source through every channel ----------------------------------------------------


def _run(
    capture: Capture,
    make: Callable[[SQLiteStore, StatusBoard], ImapListener | Pop3Poller],
    states: set[SourceState],
    *,
    raises: type[BaseException] | None = MailServerError,
    catch_ups: int = 0,
    path: Path | None = None,
) -> str:
    """``poll_once``, then run in a thread until the status is one of *states* (and after
    *catch_ups* catch-ups); then ``mailtether status``, text and JSON: the text.

    The status lives in a SQLite store (at *path*, if given: one that may hold more); the
    notifications go to the capture and to a :class:`LoggingNotifier`.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = path or Path(directory) / "state.db"
        store = SQLiteStore(str(path))
        try:
            board = StatusBoard(store, notifiers=[capture.notifier, LoggingNotifier()])
            runner = make(store, board)
            if raises is None:
                runner.poll_once()
            else:
                with capture.raised(raises):
                    runner.poll_once()
            runner.run_in_thread()
            try:
                if catch_ups:
                    assert runner.wait_for_catch_ups(catch_ups, timeout=10)
                eventually(
                    lambda: (
                        (status := board.get(runner.name)) is not None and status.state in states
                    ),
                    timeout=10,
                )
            finally:
                runner.stop()
            capture.board(board)
        finally:
            store.close()
        url = f"sqlite://{path}"
        code, shown = capture.cli("status", "--store", url)
        assert code == 0
        assert capture.cli("status", "--store", url, "--json")[0] == 0
    return shown


def _told(capture: Capture, words: str) -> bool:
    """Whether a notification said *words* (the reason of a change of state)."""
    return any(words in text for channel, text in capture.texts if channel == NOTIFICATION)


def _listener(settings: ImapSettings) -> Callable[[SQLiteStore, StatusBoard], ImapListener]:
    def make(store: SQLiteStore, board: StatusBoard) -> ImapListener:
        return ImapListener(
            settings,
            lambda delivery: None,
            keepalive=FAST,
            reconnect=Fixed(0.05),
            store=store,
            status=board,
            poll_interval=0.05,
            lease_ttl=None,
            heartbeat=None,
        )

    return make


def _poller(settings: ImapSettings) -> Callable[[SQLiteStore, StatusBoard], Pop3Poller]:
    def make(store: SQLiteStore, board: StatusBoard) -> Pop3Poller:
        return Pop3Poller(
            settings,
            lambda delivery: None,
            reconnect=Fixed(0.05),
            store=store,
            status=board,
            poll_interval=0.1,
            timeout=2,
            lease_ttl=None,
            heartbeat=None,
        )

    return make


def _check(capture: Capture, url: str) -> list[str]:
    """``mailtether check``, text and ``--json``: the steps that failed, by the text.

    Not by the JSON: a secret of digits can be a piece of a number in it ("seconds"), and
    the number is redacted too, which leaves no JSON.
    """
    code, text = capture.cli("check", url, "--timeout", "2")
    assert capture.cli("check", url, "--timeout", "2", "--json")[0] == code
    return re.findall(r"^  FAIL (\w+)", text, re.MULTILINE)


def _imap_url(secret: str, port: int, *, auth: str = "password", user: str = USER) -> str:
    query = "security=plain" + ("&auth=xoauth2" if auth == "xoauth2" else "")
    return f"imap://{user}:{quote(secret, safe='')}@{HOST}:{port}/{FOLDER}?{query}"


def _pop3_url(secret: str, port: int, *, user: str = USER) -> str:
    return f"pop3://{user}:{quote(secret, safe='')}@{HOST}:{port}/?security=plain"


def _sasl(mechanism: str, secret: str, user: str = USER) -> bytes:
    """The base64 line a client sends after AUTHENTICATE's ``+``."""
    text = (
        f"\0{user}\0{secret}"
        if mechanism == "PLAIN"
        else f"user={user}\x01auth=Bearer {secret}\x01\x01"
    )
    return base64.b64encode(text.encode("utf-8"))


def _imap_quoted(secret: str) -> bytes:
    return secret.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")


def _line(data: bytes) -> bytes:
    return data.rstrip(b"\r\n")


# -- 1. IMAP: the login rejected, the LOGIN line echoed ----------------------------------------


def _imap_login_echoed(capture: Capture, secret: str) -> None:
    logins: list[bytes] = []

    def login(line: bytes) -> bytes:
        logins.append(line)
        return b"TAG NO [AUTHENTICATIONFAILED] wrong password, you sent: " + _line(line) + b"\r\n"

    with Scripted.imap({b"LOGIN": login}) as server:
        server.answers[b"AUTHENTICATE"] = lambda line: (
            b"TAG NO [AUTHENTICATIONFAILED] no such credentials as "
            + _line(server.continuations[-1])
            + b"\r\n"
        )
        settings = ImapSettings(HOST, USER, secret, port=server.port, security="plain")
        # LOGIN carries ASCII only: another password goes by AUTHENTICATE PLAIN (UTF-8).
        sent = secret.isascii()
        with capture.raised(AuthenticationFailed):
            ImapConnection.open(settings, keepalive=FAST)
        shown = _run(capture, _listener(settings), {SourceState.BLOCKED})
        assert _check(capture, _imap_url(secret, server.port)) == ["login"]
    assert ("you sent: " if sent else "no such credentials as") in shown  # the echo, redacted
    if sent:
        assert any(_imap_quoted(secret) in line for line in logins), "LOGIN never sent it"
    assert _sasl("PLAIN", secret) + b"\r\n" in server.continuations, "check never sent it"


@CASES
@given(secret=ANY_SECRETS)
def test_imap_login_rejected_with_the_login_line_echoed(secret: str) -> None:
    _usable(secret)
    with capturing() as capture:
        _imap_login_echoed(capture, secret)
    _assert_clean(capture, secret, "imap-login-echoed")


# -- 2. IMAP XOAUTH2: the AUTHENTICATE rejected, the SASL string echoed ------------------------


def _xoauth2_echoed(capture: Capture, secret: str) -> None:
    with Scripted.imap({}) as server:
        server.answers[b"AUTHENTICATE"] = lambda line: (
            b"TAG NO [AUTHENTICATIONFAILED] invalid token in "
            + _line(server.continuations[-1])
            + b"\r\n"
        )
        settings = ImapSettings(
            HOST, USER, secret, port=server.port, security="plain", auth="xoauth2"
        )
        with capture.raised(AuthenticationFailed):
            ImapConnection.open(settings, keepalive=FAST)
        shown = _run(capture, _listener(settings), {SourceState.BLOCKED})
        assert _check(capture, _imap_url(secret, server.port, auth="xoauth2")) == ["login"]
    assert "invalid token in " in shown
    sent = _sasl("XOAUTH2", secret) + b"\r\n"
    assert server.continuations.count(sent) >= 3, "the token was not sent"


@CASES
@given(secret=SECRETS)
def test_imap_xoauth2_rejected_with_the_sasl_string_echoed(secret: str) -> None:
    _usable(secret)
    with capturing() as capture:
        _xoauth2_echoed(capture, secret)
    _assert_clean(capture, secret, "imap-xoauth2-echoed")


# -- 3. IMAP: the login accepted, the secret echoed later --------------------------------------

_SELECTED: Final = (
    b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] UIDs valid\r\n* OK [UIDNEXT 2] next\r\n"
    b"TAG OK [READ-WRITE] Select completed\r\n"
)


def _imap_echoed_later(capture: Capture, secret: str, auth: str, where: str) -> None:
    """Logged in; the SELECT (or the FETCHes) answer with what the login sent, and the secret."""
    heard: list[bytes] = []

    def login(line: bytes) -> bytes:
        heard.append(_line(line))
        return b"TAG OK Logged in\r\n"

    def echo() -> bytes:
        return b" / ".join([*heard[-1:], secret.encode("utf-8")])

    def select(line: bytes) -> bytes:
        if where == "select":
            return b"TAG NO [SERVERBUG] cannot open INBOX for " + echo() + b"\r\n"
        return _SELECTED

    def uid(line: bytes) -> bytes:
        if b"SEARCH" in line.upper():
            return b"* SEARCH 1\r\nTAG OK Search completed\r\n"
        if b"RFC822.SIZE" in line.upper():
            return b"TAG NO [SERVERBUG] no size for " + echo() + b"\r\n"
        # A FETCH answer that cannot be parsed, holding what the client sent.
        return b"* 1 FETCH (UID 1 BODY[] (" + echo() + b"\r\nTAG OK done\r\n"

    with Scripted.imap({b"LOGIN": login, b"SELECT": select, b"UID": uid}) as server:

        def authenticate(line: bytes) -> bytes:
            heard.append(_line(server.continuations[-1]))
            return b"TAG OK Logged in\r\n"

        server.answers[b"AUTHENTICATE"] = authenticate
        settings = ImapSettings(
            HOST,
            USER,
            secret,
            port=server.port,
            security="plain",
            auth="xoauth2" if auth == "xoauth2" else "password",
        )
        if where == "select":
            with capture.raised(FolderMissing):
                ImapConnection.open(settings, keepalive=FAST)
            shown = _run(capture, _listener(settings), {SourceState.BLOCKED})
            assert "cannot open INBOX for " in shown
        else:  # the mail cannot be read: tried again, then held, the source ONLINE
            _run(capture, _listener(settings), {SourceState.ONLINE}, raises=None, catch_ups=3)
        failed = _check(capture, _imap_url(secret, server.port, auth=auth))
        assert failed == (["select"] if where == "select" else [])
    sent = _imap_quoted(secret) if auth == "password" else _sasl("XOAUTH2", secret)
    assert any(sent in line for line in heard), "the secret was never sent"


@CASES
@given(
    case=st.one_of(
        st.tuples(st.just("password"), ASCII_SECRETS),
        st.tuples(st.just("xoauth2"), SECRETS),
    ),
    where=st.sampled_from(["select", "fetch"]),
)
def test_imap_login_accepted_then_the_secret_echoed(case: tuple[str, str], where: str) -> None:
    auth, secret = case
    _usable(secret)
    with capturing() as capture:
        _imap_echoed_later(capture, secret, auth, where)
    _assert_clean(capture, secret, "imap-echoed-later")


# -- 3b. ScriptedImapServer: the password checked, then quoted in a FETCH's NO ----------------


def _scripted_server_echo(capture: Capture, secret: str) -> None:
    with ScriptedImapServer(user=USER, password=secret) as server:
        uid = server.append(b"Subject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nHi!\r\n")
        server.fetch_no(uid, text=f"[SERVERBUG] cannot read the mail of {USER} ({secret})")
        settings = ImapSettings(HOST, USER, secret, port=server.port, security="plain")
        # Tried, then held with the server's words as its reason; the source stays ONLINE.
        shown = _run(capture, _listener(settings), {SourceState.ONLINE}, raises=None, catch_ups=3)
        assert _check(capture, _imap_url(secret, server.port)) == []
        assert f"cannot read the mail of {USER} (***)" in shown  # the held mail's reason
        # The server checked the password: every session logged in (LOGIN, then check's PLAIN).
        commands = server.commands
    assert commands.count(f"LOGIN {USER} ***") >= 2
    assert "AUTHENTICATE PLAIN" in commands
    assert any(command.startswith("UID FETCH") for command in commands)


@CASES
@given(secret=ASCII_SECRETS)
def test_scripted_imap_server_quotes_the_password_in_a_fetch_refusal(secret: str) -> None:
    _usable(secret)
    with capturing() as capture:
        _scripted_server_echo(capture, secret)
    _assert_clean(capture, secret, "scripted-imap-server")


# -- 4. POP3: the login rejected, the PASS line echoed -----------------------------------------


def _pop3_rejected(capture: Capture, secret: str) -> None:
    passes: list[bytes] = []

    def password(line: bytes) -> bytes:
        passes.append(line)
        return b"-ERR [AUTH] wrong password " + _line(line) + b" for " + USER.encode() + b"\r\n"

    with Scripted.pop3({b"PASS": password}) as server:
        settings = ImapSettings(HOST, USER, secret, port=server.port, security="plain")
        with capture.raised(AuthenticationFailed):
            Pop3Connection.open(settings, 2)
        shown = _run(capture, _poller(settings), {SourceState.BLOCKED})
        assert _check(capture, _pop3_url(secret, server.port)) == ["login"]
    assert f"wrong password PASS *** for {USER}" in shown
    assert passes.count(b"PASS " + secret.encode("utf-8") + b"\r\n") >= 4, "PASS never sent it"


@CASES
@given(secret=SECRETS)
def test_pop3_login_rejected_with_the_pass_line_echoed(secret: str) -> None:
    _usable(secret)
    with capturing() as capture:
        _pop3_rejected(capture, secret)
    _assert_clean(capture, secret, "pop3-pass-echoed")


# -- 5. POP3: the login accepted, the secret echoed later --------------------------------------


def _pop3_echoed_later(capture: Capture, secret: str, where: str) -> None:
    """Logged in (``+OK`` quoting the PASS line); the listing or STAT refused quoting it."""
    passes: list[bytes] = []

    def password(line: bytes) -> bytes:
        passes.append(_line(line))
        return b"+OK Logged in, you said " + _line(line) + b"\r\n"

    def said() -> bytes:
        return passes[-1]

    def uidl(line: bytes) -> bytes:
        if where == "garbled":  # a line of the listing that is no "number uidl"
            return b"+OK\r\n" + said() + b"\r\n.\r\n"
        return b"-ERR [SYS/TEMP] cannot list for " + said() + b"\r\n"

    answers: dict[bytes, Answer] = {
        b"PASS": password,
        b"UIDL": uidl,
        b"LIST": lambda line: b"-ERR [SYS/TEMP] no listing: " + secret.encode("utf-8") + b"\r\n",
        b"STAT": lambda line: b"-ERR [SYS/TEMP] no maildrop for " + said() + b"\r\n",
    }
    with Scripted.pop3(answers) as server:
        settings = ImapSettings(HOST, USER, secret, port=server.port, security="plain")
        failure = MalformedReply if where == "garbled" else ConnectionLost
        shown = _run(capture, _poller(settings), {SourceState.RETRYING}, raises=failure)
        assert _check(capture, _pop3_url(secret, server.port)) == ["stat"]
    # RETRYING: the reason may have changed by the time it is shown (a timeout, on a busy
    # machine); the change to RETRYING was told with the server's words.
    told = "malformed line" if where == "garbled" else "no listing: ***"
    assert told in shown or _told(capture, told)
    assert passes.count(b"PASS " + secret.encode("utf-8")) >= 3, "PASS never sent it"


@CASES
@given(secret=SECRETS, where=st.sampled_from(["refused", "garbled"]))
def test_pop3_login_accepted_then_the_secret_echoed(secret: str, where: str) -> None:
    _usable(secret)
    with capturing() as capture:
        _pop3_echoed_later(capture, secret, where)
    _assert_clean(capture, secret, "pop3-echoed-later")


# -- 6. Dovecot: a wrong password (no echo; the client's own trace and errors) -----------------


def _imaps(secret: str, dovecot: Any, tls_ca: Any, user: str) -> ImapSettings:
    context = tls_ca.client_context()
    return ImapSettings(
        HOST, user, secret, port=dovecot.imaps_port, security="tls", ssl_context=context
    )


def _dovecot(capture: Capture, secret: str, dovecot: Any, tls_ca: Any, user: str) -> None:
    """Listener (IMAPS), XOAUTH2, poller and ``check``, side by side.

    Dovecot answers each failed login after half a second: one after the other, an example
    would take seconds.
    """
    imaps = _imaps(secret, dovecot, tls_ca, user)
    blocked = SourceState.BLOCKED  # beyond ASCII by AUTHENTICATE PLAIN (see scenario 1)
    failure = AuthenticationFailed
    xoauth2 = ImapSettings(
        HOST, user, secret, port=dovecot.imap_port, security="plain", auth="xoauth2"
    )
    pop3 = ImapSettings(HOST, user, secret, port=dovecot.pop3_port, security="plain")

    def refused_xoauth2() -> None:
        with capture.raised(AuthenticationFailed):  # Dovecot offers no XOAUTH2 here
            ImapConnection.open(xoauth2, keepalive=FAST)

    def checked(url: str) -> Callable[[], None]:
        return lambda: _assert_equal(_check(capture, url), ["login"])

    parts = [
        lambda: _run(capture, _listener(imaps), {blocked}, raises=failure),
        lambda: _run(capture, _poller(pop3), {SourceState.BLOCKED}, raises=AuthenticationFailed),
        refused_xoauth2,
        checked(_imap_url(secret, dovecot.imap_port, user=user)),
        checked(_imap_url(secret, dovecot.imap_port, auth="xoauth2", user=user)),
        checked(_pop3_url(secret, dovecot.pop3_port, user=user)),
    ]
    with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
        for done in [pool.submit(part) for part in parts]:
            done.result()


def _assert_equal(found: object, expected: object) -> None:
    assert found == expected


def _dovecot_login(capture: Capture, secret: str, dovecot: Any, tls_ca: Any, user: str) -> None:
    """Only the listener's first step: connect to IMAPS and log in."""
    with capture.raised(AuthenticationFailed):  # beyond ASCII too: AUTHENTICATE PLAIN
        ImapConnection.open(_imaps(secret, dovecot, tls_ca, user), keepalive=FAST)


@SERVER_CASES
@given(secret=ANY_SECRETS)
def test_dovecot_rejects_a_wrong_password(secret: str, mailbox: Any, tls_ca: Any) -> None:
    _usable(secret, mailbox.user)
    assume(secret != mailbox.password)
    with capturing() as capture:
        _dovecot(capture, secret, mailbox.server, tls_ca, mailbox.user)
    _assert_clean(capture, secret, "dovecot", mailbox.user)


# -- 7. store URLs: servers that echo the password, and none at all ----------------------------


class _EchoServer(LoopbackServer):
    """A server on loopback that answers each connection with *answer*(socket)."""

    def __init__(self, answer: Callable[[socket.socket], bytes]) -> None:
        super().__init__()
        self.answer = answer
        self.received: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(struct.error):
            self.received.append(self.answer(conn))


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise OSError("closed")
        data += more
    return data


def _redis_auth(conn: socket.socket) -> bytes:
    """Read one RESP command (``HELLO 3 AUTH default <password>``); refuse it, quoting it."""
    reader = conn.makefile("rb")
    count = int(reader.readline()[1:])
    words = []
    for _ in range(count):
        size = int(reader.readline()[1:])
        words.append(reader.read(size + 2)[:-2])
    said = b" ".join(words)
    conn.sendall(b"-WRONGPASS invalid password, you sent " + said + b"\r\n")
    with contextlib.suppress(OSError):
        conn.recv(1)  # until the client gives up
    return said


def _postgres_auth(conn: socket.socket) -> bytes:
    """Ask for a cleartext password; refuse it, quoting it (FATAL 28P01)."""

    def startup() -> bytes:
        size = struct.unpack("!I", _exactly(conn, 4))[0]
        return _exactly(conn, size - 4)

    body = startup()
    while struct.unpack("!I", body[:4])[0] in (80877103, 80877104):  # SSLRequest, GSSENCRequest
        conn.sendall(b"N")
        body = startup()
    conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
    _exactly(conn, 1)  # "p"
    size = struct.unpack("!I", _exactly(conn, 4))[0]
    password = _exactly(conn, size - 4).rstrip(b"\0")
    fields = (
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed, you sent " + password + b"\0\0"
    )
    conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
    return password


_STORES: Final[dict[str, tuple[str, Callable[[socket.socket], bytes] | None]]] = {
    "redis-echo": ("redis://:{}@127.0.0.1:{}/0", _redis_auth),
    "postgres-echo": ("postgresql://" + USER + ":{}@127.0.0.1:{}/mail", _postgres_auth),
    "redis-unreachable": ("redis://:{}@127.0.0.1:1/0", None),
    "postgres-unreachable": ("postgresql://" + USER + ":{}@127.0.0.1:1/mail", None),
}


def _store(capture: Capture, secret: str, kind: str) -> None:
    template, answer = _STORES[kind]
    encoded = quote(secret, safe="")
    with contextlib.ExitStack() as stack:
        server = None if answer is None else stack.enter_context(_EchoServer(answer))
        url = template.format(encoded, 0 if server is None else server.port)
        with capture.raised(StoreError):
            store_from_url(url)
        assert capture.cli("status", "--store", url)[0] == 3
        assert capture.cli("status", "--store", url, "--json")[0] == 3
    if server is not None:
        assert len(server.received) >= 3
        assert all(secret.encode("utf-8") in said for said in server.received), "not sent"


@pytest.mark.parametrize("kind", sorted(_STORES))
@CASES
@given(secret=SECRETS)
def test_a_store_url_password(kind: str, secret: str) -> None:
    pytest.importorskip("redis" if kind.startswith("redis") else "psycopg")
    _usable(secret)
    with capturing() as capture:
        _store(capture, secret, kind)
    _assert_clean(capture, secret, f"store-{kind.split('-')[0]}")


# -- 8. OAuth2: the secrets of the token sources -----------------------------------------------

TOKEN_LEAKS: Final = {
    "test_the_token_endpoint_fails_quoting_the_request[revoked, invalid_client, 503, 429]": (
        "_tokens.py _Endpoint._post raised TokenRevoked/TokenUnavailable inside the handler "
        "of urllib's HTTPError ('from None'): the HTTPError stayed the error's __context__, "
        "and its reason phrase is the endpoint's own words: one quoting the request showed "
        "the refresh token in use and the client secret, percent-encoded"
    ),
    "test_the_token_endpoint_fails_quoting_the_request[garbled]": (
        "an answer whose first line is no HTTP status line: http.client's BadStatusLine, "
        "neither an OSError nor a ValueError, left token() as it was, holding that line (the "
        "request quoted, new tokens), unredacted; the source saw an unexpected error, not "
        "TokenUnavailable"
    ),
    "test_the_token_endpoint_fails_quoting_the_request[nested]": (
        'an error answer whose "error" is an object (Google\'s APIs): a TypeError (a dict '
        "is no key of a frozenset) left token(), its __context__ the HTTPError quoting the "
        "request"
    ),
    "test_dovecot_takes_then_refuses_the_tokens": "the first case, after a revoked grant",
    "test_a_long_run_forgets_no_secret_in_use": (
        "_redaction.py let go of the oldest secrets past 4,096: every token renewal remembers "
        "two new ones, so a few hours' renewals of a fleet (or months of one mailbox's) made "
        "the process forget the passwords, client secrets and store passwords given at the "
        "start, and a server echoing one showed it; now only the secrets a token source has "
        "replaced are ever let go"
    ),
    "test_a_password_in_the_token_endpoints_url_is_refused_unseen": (
        "a token URL with a password in it (which urllib cannot use: it reads alice:pw@host "
        "as the host) was taken, and every failure said 'asking https://alice:pw@host/token',"
        " in the status reason, logs and notifications, as did the source's repr"
    ),
}
"""What section 8 found leaking (fixed since), by the test that shows it on every example."""

ROLES: Final = ("refresh token", "client secret", "access token", "rotated refresh token")
CLIENT_ID: Final = "mt-client"
APP_ID: Final = "mt-app"
_OAUTH2_WORDS: Final = (CLIENT_ID, APP_ID, "Bearer", "oauth2", "/token")
"""Fixed words around the token secrets in what is shown (see :func:`_usable`)."""


class TokenSecrets(NamedTuple):
    """The secrets of one OAuth2 example, each drawn, all different."""

    refresh: str
    """The refresh token given (the user's consent)."""
    client: str
    """The client secret (a confidential client's; an app-only client's)."""
    access: str
    """The access token the endpoint hands out (every one, in the examples that log in)."""
    rotated: str
    """The refresh token the endpoint rotates the given one to (kept in the store)."""

    def named(self) -> dict[str, str]:
        return dict(zip(ROLES, self, strict=True))


TOKEN_SECRETS: Final = st.lists(ANY_SECRETS, min_size=4, max_size=4, unique=True).map(
    lambda drawn: TokenSecrets(*drawn)
)
"""Drawn as passwords are: the OAuth2 test endpoint (form-encoded UTF-8), the scripted servers
and Dovecot (any token without control characters) take each of them."""


def _usable_tokens(secrets: TokenSecrets, *names: str) -> None:
    """Each secret :func:`_usable`, and no two sharing 4 characters (redacting one must not
    cut another's form in two)."""
    for secret in secrets:
        _usable(secret, *_OAUTH2_WORDS, *names)
    for one, other in itertools.combinations(secrets, 2):
        assume(not (_pieces(one) & _pieces(other)))


def _assert_tokens_clean(
    capture: Capture, secrets: TokenSecrets, scenario: str, user: str = USER
) -> None:
    """:func:`_assert_clean` for every secret of *secrets*, each named by its role."""
    leaks = []
    for role, secret in secrets.named().items():
        found = [
            finding
            for finding in capture.findings(secret, user)
            if not any(known.explains(scenario, finding) for known in KNOWN_LEAKS)
        ]
        if found:
            leaks.append(f"the {role} {secret!r} leaked:\n" + "\n".join(map(str, found)))
    assert not leaks, "\n".join(leaks)


def _bearer(initial: bytes) -> bytes:
    """The token in a base64 XOAUTH2/OAUTHBEARER string (empty if there is none)."""
    try:
        said = base64.b64decode(initial.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    _, found, rest = said.partition(b"auth=Bearer ")
    return rest.split(b"\x01")[0] if found else b""


def _refresh_flow(oauth2: Any, secrets: TokenSecrets, store: Any, user: str = USER) -> Any:
    """The user's :class:`RefreshTokenFlow`, configured with the refresh token given."""
    return RefreshTokenFlow(
        oauth2.token_url,
        CLIENT_ID,
        secrets.refresh,
        client_secret=secrets.client,
        account=user,
        store=store,
        margin=0,
        timeout=10,  # a busy machine is no endpoint that is down
    )


def _app_flow(oauth2: Any, secrets: TokenSecrets) -> ClientCredentialsFlow:
    return ClientCredentialsFlow(
        oauth2.token_url, APP_ID, secrets.client, scope="mail", account=USER, margin=0, timeout=10
    )


def _oauth2(settings_port: int, tokens: TokenSource, *, user: str = USER) -> ImapSettings:
    return ImapSettings(
        HOST, user, tokens, port=settings_port, security="plain", auth="oauth2", connect_timeout=5
    )


@functools.cache
def _tls() -> ssl.SSLContext:
    """One SSL context for the plain-text checks and notifier (each default one costs 30 ms
    of reading the system's CAs, and plain text uses none)."""
    return ssl.create_default_context()


def _url(scheme: str, port: int, user: str = USER) -> str:
    """A mail URL without a password (the token source logs in)."""
    folder = f"/{FOLDER}" if scheme == "imap" else "/"
    return f"{scheme}://{user}@{HOST}:{port}{folder}?security=plain"


def _stored_refresh_token(path: Path, user: str = USER) -> str | None:
    """The refresh token a :class:`RefreshTokenFlow` kept in the store at *path*."""
    store = SQLiteStore(str(path))
    try:
        record = store.get("oauth2", f"{CLIENT_ID}:{user}")
    finally:
        store.close()
    return None if record is None else record.data.get("refresh_token")


# A token command: prints the token in the file it is given; with a non-zero status, says on
# stderr that it cannot renew it, quoting it (as a careless helper does).
_TOKEN_COMMAND: Final = """\
import sys
token = open(sys.argv[1], "rb").read()
sys.stdout.buffer.write(token + b"\\n")
if sys.argv[2] != "0":
    sys.stderr.buffer.write(b"cannot renew the token " + token + b"\\n")
sys.exit(int(sys.argv[2]))
"""


def _token_command(directory: str, token: str, status: int = 0) -> str:
    """``--token-command``: a command printing *token* (the token is in a file, not argv)."""
    script, held = Path(directory) / "token.py", Path(directory) / "token"
    script.write_text(_TOKEN_COMMAND)
    held.write_bytes(token.encode("utf-8"))
    return shlex.join([sys.executable, "-I", "-S", str(script), str(held), str(status)])


class _SmtpHandler:
    """aiosmtpd: takes XOAUTH2 and OAUTHBEARER logins, or refuses them quoting the string
    and the token; keeps what it is sent."""

    def __init__(self) -> None:
        self.refuse = True
        self.offered: list[bytes] = []
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.content))
        return "250 OK"

    def _login(self, args: list[str]) -> Any:
        from aiosmtpd.smtp import AuthResult

        initial = args[1].encode("ascii") if len(args) > 1 else b""
        token = _bearer(initial)
        self.offered.append(token)
        if not self.refuse:
            return AuthResult(success=True)
        echo = (initial + b" (" + token + b")").decode("utf-8", "replace")
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 invalid {echo}")

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        return self._login(args)

    async def auth_OAUTHBEARER(self, server: Any, args: list[str]) -> Any:
        return self._login(args)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, _SmtpHandler]]:
    """An aiosmtpd server with :class:`_SmtpHandler`: its port, and the handler."""
    from aiosmtpd.controller import Controller

    from servers import free_port

    handler = _SmtpHandler()
    controller = Controller(handler, hostname=HOST, port=free_port(), auth_require_tls=False)
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


def _notify(capture: Capture, port: int, handler: _SmtpHandler, tokens: TokenSource) -> None:
    """A :class:`SmtpNotifier` logging in with *tokens* mails a status change (or logs why
    it could not): its logs, and the mail it sent."""
    from mailtether import SmtpNotifier

    sent = len(handler.received)
    notifier = SmtpNotifier(
        HOST,
        "mailtether@example.com",
        ["admin@example.com"],
        port=port,
        security="plain",
        username=USER,
        password=tokens,
        timeout=5,
        ssl_context=_tls(),
    )
    board = StatusBoard(MemoryStore(), notifiers=[notifier], quiet_period=0)
    board.set(f"{USER}/{FOLDER}", SourceState.BLOCKED, reason="the token test")
    assert notifier.flush(timeout=10)
    for mail in handler.received[sent:]:
        capture.add(f"{NOTIFICATION} by e-mail", mail.decode("utf-8", "replace"))


# -- 8a. the token endpoint fails, quoting the request back ------------------------------------

ENDPOINT_FAILURES: Final[dict[object, tuple[type[MailServerError], SourceState]]] = {
    "revoked": (TokenRevoked, SourceState.BLOCKED),
    "invalid_client": (TokenRevoked, SourceState.BLOCKED),
    503: (TokenUnavailable, SourceState.RETRYING),
    429: (TokenUnavailable, SourceState.RETRYING),
    "refuse": (TokenUnavailable, SourceState.RETRYING),
    "garbled": (TokenUnavailable, SourceState.RETRYING),
    "not json": (TokenUnavailable, SourceState.RETRYING),
    "nested": (TokenUnavailable, SourceState.RETRYING),
    "cut": (TokenUnavailable, SourceState.RETRYING),
}
"""How the endpoint fails (see :meth:`servers.oauth2.OAuth2Server.down`; ``revoked``: the
user withdrew the grant, ``invalid_client``: the app's secret expired), and what the library
must make of it: the error every channel raises, and the state of a source."""


def _endpoint_fails(
    capture: Capture, secrets: TokenSecrets, failure: object, smtp: tuple[int, _SmtpHandler]
) -> None:
    """The refresh token rotates (kept in the store); the process restarts; then the endpoint
    fails, quoting every request back: the token sources' errors, a listener, a poller (an
    app-only client), ``check`` and a :class:`SmtpNotifier` with them, ``mailtether status``
    on the store that holds the rotated refresh token."""
    started = _SECRETS.snapshot()
    error, state = ENDPOINT_FAILURES[failure]
    imap_answers = {b"CAPABILITY": b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nTAG OK done\r\n"}
    pop3_answers: dict[bytes, Answer] = {b"CAPA": b"+OK\r\nUIDL\r\nSASL XOAUTH2\r\n.\r\n"}
    with contextlib.ExitStack() as stack:
        oauth2 = stack.enter_context(OAuth2Server(echo=True, token_lifetime=3600))
        imap = stack.enter_context(Scripted.imap(imap_answers))
        pop3 = stack.enter_context(Scripted.pop3(pop3_answers))
        path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "state.db"
        oauth2.register_client(secrets.client, client_id=CLIENT_ID)
        oauth2.register_app(USER, client_secret=secrets.client, client_id=APP_ID)
        oauth2.issue_refresh_token(USER, client_id=CLIENT_ID, token=secrets.refresh)
        oauth2.hand_out(USER, access_tokens=[secrets.access] * 99, refresh_tokens=[secrets.rotated])

        # The first run: a token, and the refresh token rotated into the store.
        with contextlib.closing(SQLiteStore(str(path))) as store:
            assert _refresh_flow(oauth2, secrets, store).token().value == secrets.access
        assert _stored_refresh_token(path) == secrets.rotated

        # A restart (nothing remembered), and the endpoint fails.
        _SECRETS.restore(started)
        asked = len(oauth2.token_requests)
        if failure == "revoked":
            oauth2.revoke(USER)  # the app-only client's grant too
        elif failure == "invalid_client":  # the app's secret expired
            oauth2.expire_client_secret(CLIENT_ID)
            oauth2.expire_client_secret(APP_ID)
        else:
            oauth2.down(failure)  # type: ignore[arg-type]

        def listener(store: SQLiteStore, board: StatusBoard) -> ImapListener:
            tokens = _refresh_flow(oauth2, secrets, store)
            return _listener(_oauth2(imap.port, tokens))(store, board)

        _run(capture, listener, {state}, raises=error, path=path)
        assert _told(capture, f"token for {USER}")  # the token endpoint's failure, for whom
        _run(
            capture, _poller(_oauth2(pop3.port, _app_flow(oauth2, secrets))), {state}, raises=error
        )
        store = stack.enter_context(contextlib.closing(SQLiteStore(str(path))))
        anew = _refresh_flow(oauth2, secrets, None)  # no store: the refresh token given
        for tokens in (_refresh_flow(oauth2, secrets, store), anew, _app_flow(oauth2, secrets)):
            with capture.raised(error):  # the given one is spent: invalid_grant, if answered
                tokens.token()
        for url in (_url("imap", imap.port), _url("pop3", pop3.port)):
            flow = _refresh_flow(oauth2, secrets, store)
            assert _checked_by_the_api(capture, url, tokens=flow) == ["login"]
        offered = len(smtp[1].offered)
        _notify(capture, *smtp, _refresh_flow(oauth2, secrets, store))
        assert len(smtp[1].offered) == offered, "no token: no login"
        # The store still holds the rotated refresh token (the one secret it may hold).
        assert _stored_refresh_token(path) == secrets.rotated
    if failure != "refuse":
        sent = [form.get("refresh_token") for form in oauth2.token_requests[asked:]]
        assert secrets.rotated in sent, "the rotated refresh token was not sent"
        assert secrets.refresh in sent, "the refresh token given was not sent"
        forms = oauth2.token_requests[asked:]
        assert any(form.get("client_secret") == secrets.client for form in forms), "not sent"


@pytest.mark.parametrize("failure", list(ENDPOINT_FAILURES), ids=str)
@TOKEN_CASES
@given(secrets=TOKEN_SECRETS)
def test_the_token_endpoint_fails_quoting_the_request(
    failure: object, secrets: TokenSecrets, smtp: tuple[int, _SmtpHandler]
) -> None:
    _usable_tokens(secrets, "http://127.0.0.1")
    with capturing() as capture:
        _endpoint_fails(capture, secrets, failure, smtp)
    _assert_tokens_clean(capture, secrets, "oauth2-endpoint")


# -- 8b. the tokens refused, or taken and then quoted, by the mail servers ---------------------


def _servers_echo_tokens(
    capture: Capture, secrets: TokenSecrets, where: str, smtp: tuple[int, _SmtpHandler]
) -> None:
    """A refresh flow (the refresh token rotating into the store), a token command and a fixed
    token log in to servers that refuse the token quoting it (SASL string and token), or take
    it and then quote it: a listener, a poller, ``check`` of IMAP, POP3 and SMTP (by the API,
    and by the command line with ``--token-command``, also a command that fails quoting its
    token), an :class:`SmtpNotifier`, ``mailtether status`` on the store with the refresh
    token."""
    refused = where == "refused"
    heard: list[bytes] = []

    def quoted(initial: bytes) -> bytes:
        return initial + b" (" + _bearer(initial) + b")"

    def select(line: bytes) -> bytes:
        return b"TAG NO [SERVERBUG] cannot open INBOX for " + quoted(heard[-1]) + b"\r\n"

    def auth(line: bytes) -> bytes:  # POP3: AUTH <mechanism> <initial response>
        heard.append(line.split()[2])
        said = quoted(heard[-1])
        return b"-ERR [AUTH] invalid token " + said + b"\r\n" if refused else b"+OK hi\r\n"

    def pop3_refusal(line: bytes) -> bytes:
        return b"-ERR [SYS/TEMP] no maildrop for " + quoted(heard[-1]) + b"\r\n"

    pop3_answers: dict[bytes, Answer] = {
        b"CAPA": b"+OK\r\nUIDL\r\nSASL OAUTHBEARER XOAUTH2\r\n.\r\n",
        b"AUTH": auth,
        b"STAT": pop3_refusal,
        b"UIDL": pop3_refusal,
        b"LIST": pop3_refusal,
    }
    smtp[1].refuse = refused
    failure = AuthenticationFailed if refused else FolderMissing
    with contextlib.ExitStack() as stack:
        oauth2 = stack.enter_context(OAuth2Server(echo=True, token_lifetime=3600))
        imap = stack.enter_context(Scripted.imap({b"SELECT": select}))
        pop3 = stack.enter_context(Scripted.pop3(pop3_answers))
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        path = Path(directory) / "state.db"

        def authenticate(line: bytes) -> bytes:
            heard.append(_line(imap.continuations[-1]))
            said = quoted(heard[-1])
            if refused:
                return b"TAG NO [AUTHENTICATIONFAILED] invalid token " + said + b"\r\n"
            return b"TAG OK Logged in\r\n"

        imap.answers[b"AUTHENTICATE"] = authenticate
        oauth2.register_client(secrets.client, client_id=CLIENT_ID)
        oauth2.issue_refresh_token(USER, client_id=CLIENT_ID, token=secrets.refresh)
        oauth2.hand_out(USER, access_tokens=[secrets.access] * 99, refresh_tokens=[secrets.rotated])

        def listener(store: SQLiteStore, board: StatusBoard) -> ImapListener:
            tokens = _refresh_flow(oauth2, secrets, store)
            return _listener(_oauth2(imap.port, tokens))(store, board)

        _run(capture, listener, {SourceState.BLOCKED}, raises=failure, path=path)
        assert _stored_refresh_token(path) not in (None, secrets.refresh), "rotated, kept"
        store = stack.enter_context(contextlib.closing(SQLiteStore(str(path))))

        def poller(_: SQLiteStore, board: StatusBoard) -> Pop3Poller:
            return _poller(_oauth2(pop3.port, _refresh_flow(oauth2, secrets, store)))(_, board)

        pop3_state, pop3_failure = (
            (SourceState.BLOCKED, AuthenticationFailed)
            if refused
            else (SourceState.RETRYING, ConnectionLost)
        )
        _run(capture, poller, {pop3_state}, raises=pop3_failure)
        fixed = ImapSettings(
            HOST,
            USER,
            FixedToken(secrets.access),
            port=imap.port,
            security="plain",
            auth="oauthbearer",
        )
        with capture.raised(failure):
            ImapConnection.open(fixed, keepalive=FAST)

        steps = ["login"] if refused else ["select"]
        smtp_url = f"smtp://{USER}@{HOST}:{smtp[0]}/?security=plain&from=a@b.example&to=c@d.example"
        smtp_steps = ["auth"] if refused else []
        for url, failed in (
            (_url("imap", imap.port), steps),
            (_url("pop3", pop3.port), ["login"] if refused else ["stat"]),
            (smtp_url, smtp_steps),
        ):
            flow = _refresh_flow(oauth2, secrets, store)
            assert _checked_by_the_api(capture, url, tokens=flow) == failed
        for url, status, failed in (
            (_url("imap", imap.port), 0, steps),
            (_url("imap", imap.port), 1, ["login"]),  # the command fails, quoting its token
            (smtp_url, 0, smtp_steps),
            (smtp_url, 1, ["auth"]),
        ):
            command = _token_command(directory, secrets.access, status)
            assert _check_with(capture, url, "--token-command", command) == failed
        offered = len(smtp[1].offered)
        _notify(capture, *smtp, _refresh_flow(oauth2, secrets, store))
        assert smtp[1].offered[offered:] == [secrets.access.encode()] * (2 if refused else 1)
    sent = [_bearer(initial) for initial in heard]
    assert sent.count(secrets.access.encode()) >= 6, "the servers were not sent the token"
    forms = oauth2.token_requests
    assert forms[0]["refresh_token"] == secrets.refresh
    assert forms[1]["refresh_token"] == secrets.rotated
    assert all(form["client_secret"] == secrets.client for form in forms)


@pytest.mark.parametrize("where", ["refused", "accepted"])
@SERVER_TOKEN_CASES
@given(secrets=TOKEN_SECRETS)
def test_mail_servers_refuse_or_quote_the_tokens(
    where: str, secrets: TokenSecrets, smtp: tuple[int, _SmtpHandler]
) -> None:
    _usable_tokens(secrets, "http://127.0.0.1")
    with capturing() as capture:
        _servers_echo_tokens(capture, secrets, where, smtp)
    _assert_tokens_clean(capture, secrets, "oauth2-servers")


# -- 8c. Dovecot takes the tokens, then refuses them --------------------------------------------


def _oauth2_dovecot(
    capture: Capture, secrets: TokenSecrets, oauth2: Any, dovecot: Any, user: str
) -> None:
    """Dovecot asks the test endpoint about every token: the drawn access token logs in
    (OAUTHBEARER, IMAP and POP3); expired at the server but not in hand, it is refused and a
    new one asked for; then the grant is revoked (the tokens too): a listener and a poller
    BLOCKED, ``check`` by the API and with ``--token-command`` refused."""
    client = f"{CLIENT_ID}-{user}"
    oauth2.register_client(secrets.client, client_id=client)
    # Rotated at the first refresh, and to the drawn one at the second (the refused token's):
    # the revoked grant's refusal quotes it.
    rotations = [f"first-rotation-{user}", secrets.rotated]
    oauth2.hand_out(user, access_tokens=[secrets.access] * 99, refresh_tokens=rotations)
    with tempfile.TemporaryDirectory() as directory:
        tokens = RefreshTokenFlow(
            oauth2.token_url,
            client,
            secrets.refresh,
            client_secret=secrets.client,
            account=user,
            store=MemoryStore(),
            margin=0,
            timeout=10,
        )
        imap = _oauth2(dovecot.imap_port, tokens, user=user)
        pop3 = _oauth2(dovecot.pop3_port, tokens, user=user)
        with ImapConnection.open(imap, keepalive=FAST) as connection:  # taken
            assert connection.mechanism == "OAUTHBEARER"
        assert Pop3Poller(pop3, lambda delivery: None, store=MemoryStore()).poll_once() == 0
        refreshes = oauth2.refreshes
        oauth2.expire(user)  # refused, renewed (the same token, alive again), taken
        assert Pop3Poller(pop3, lambda delivery: None, store=MemoryStore()).poll_once() == 0
        assert oauth2.refreshes == refreshes + 1, "the refused token was renewed"
        oauth2.revoke(user, access_tokens=True)
        command = _token_command(directory, secrets.access)

        def checked(*argv: str) -> Callable[[], None]:
            return lambda: _assert_equal(_check_with(capture, *argv), ["login"])

        parts = [
            lambda: _run(capture, _listener(imap), {SourceState.BLOCKED}, raises=TokenRevoked),
            lambda: _run(capture, _poller(pop3), {SourceState.BLOCKED}, raises=TokenRevoked),
            lambda: _assert_equal(_checked_by_the_api(capture, imap), ["login"]),
            checked(_url("imap", dovecot.imap_port, user), "--token-command", command),
        ]
        with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
            for done in [pool.submit(part) for part in parts]:
                done.result()
    forms = oauth2.token_requests
    assert any(form.get("refresh_token") == secrets.rotated for form in forms), "not sent"


def _checked_by_the_api(capture: Capture, target: str | ImapSettings, **options: Any) -> list[str]:
    """:func:`mailtether.check` of *target*: the steps that failed."""
    report = capture.report(check(target, timeout=5, ssl_context=_tls(), **options))
    return [step.name for step in report.steps if not step.ok]


def _check_with(capture: Capture, url: str, *options: str) -> list[str]:
    """``mailtether check`` with *options*, text and ``--json``: the steps that failed."""
    code, text = capture.cli("check", url, "--timeout", "5", *options)
    assert capture.cli("check", url, "--timeout", "5", *options, "--json")[0] == code
    return re.findall(r"^  FAIL (\w+)", text, re.MULTILINE)


@DOVECOT_TOKEN_CASES
@given(secrets=TOKEN_SECRETS)
def test_dovecot_takes_then_refuses_the_tokens(
    secrets: TokenSecrets, oauth2: Any, oauth2_dovecot: Any
) -> None:
    user = oauth2_dovecot.add_user()
    _usable_tokens(secrets, user, f"{CLIENT_ID}-{user}", oauth2.token_url)
    try:
        oauth2.issue_refresh_token(user, client_id=f"{CLIENT_ID}-{user}", token=secrets.refresh)
    except ValueError:
        reject()  # drawn in an earlier example: issued already
    lifetime, oauth2.token_lifetime, oauth2.echo = oauth2.token_lifetime, 3600, True
    try:
        with capturing() as capture:
            _oauth2_dovecot(capture, secrets, oauth2, oauth2_dovecot, user)
    finally:
        oauth2.token_lifetime, oauth2.echo = lifetime, False
        oauth2.forget(user)
    _assert_tokens_clean(capture, secrets, "oauth2-dovecot", user)


# -- 8d. a long run: the secrets in use are never forgotten ------------------------------------

RENEWALS: Final = 40
REMEMBERED: Final = 16
"""The long run renews its token :data:`RENEWALS` times with the process remembering room
for :data:`REMEMBERED` secrets no longer in use (``mailtether._redaction._MOST``, 4,096: at
an hour a token and 2 secrets a renewal, a few hours' renewals of a fleet of a thousand
mailboxes; patched, so that 40 renewals show what months of them do)."""


def _long_run(capture: Capture, secrets: TokenSecrets, password: str) -> None:
    """A password and a flow are given at the start; the flow renews its token
    :data:`RENEWALS` times (a new access token and a rotated refresh token each; the last
    ones are the drawn access token and rotated refresh token); then a server refuses the
    password, quoting it, and the flow's token, quoting it; the renewal that follows finds
    the endpoint down, quoting the request: the refresh token in use, the client secret."""
    import mailtether._redaction as redaction

    def login(line: bytes) -> bytes:
        return b"TAG NO [AUTHENTICATIONFAILED] wrong password, you sent: " + _line(line) + b"\r\n"

    def authenticate(line: bytes) -> bytes:
        said = _line(server.continuations[-1])
        return (
            b"TAG NO [AUTHENTICATIONFAILED] invalid token " + said + b" " + _bearer(said) + b"\r\n"
        )

    before = [
        f"{kind}-{n}-of-the-long-run"
        for kind in ("access", "rotation")
        for n in range(RENEWALS - 1)
    ]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(redaction, "_MOST", REMEMBERED))
        oauth2 = stack.enter_context(OAuth2Server(echo=True, token_lifetime=3600))
        server = stack.enter_context(
            Scripted.imap({b"LOGIN": login, b"AUTHENTICATE": authenticate})
        )
        oauth2.register_client(secrets.client, client_id=CLIENT_ID)
        oauth2.issue_refresh_token(USER, client_id=CLIENT_ID, token=secrets.refresh)
        oauth2.hand_out(
            USER,
            access_tokens=[*before[: RENEWALS - 1], secrets.access],
            refresh_tokens=[*before[RENEWALS - 1 :], secrets.rotated],
        )
        by_password = ImapSettings(HOST, USER, password, port=server.port, security="plain")
        tokens = _refresh_flow(oauth2, secrets, MemoryStore())
        for _ in range(RENEWALS):
            tokens.token(fresh=True)
        # Only what was replaced is let go, the oldest first (a process renewing tokens for
        # months keeps only the last 4,096 of them).
        from mailtether._redaction import redact

        assert redact(before[0]) == before[0], "the first token replaced is let go"
        assert redact(before[RENEWALS - 2]) == "***", "the last tokens replaced are not"
        with capture.raised(AuthenticationFailed):
            ImapConnection.open(by_password, keepalive=FAST)
        oauth2.down(503)
        with capture.raised(TokenUnavailable):
            ImapConnection.open(_oauth2(server.port, tokens), keepalive=FAST)
    assert oauth2.token_requests[-1]["refresh_token"] == secrets.rotated, "not in use"
    assert _bearer(_line(server.continuations[-1])) == secrets.access.encode(), "not in hand"
    # The password (by LOGIN, or AUTHENTICATE PLAIN beyond ASCII), then the token.
    assert server.commands.count(b"LOGIN") + server.commands.count(b"AUTHENTICATE") == 2


@LONG_RUN_CASES
@given(secrets=TOKEN_SECRETS, password=ANY_SECRETS)
def test_a_long_run_forgets_no_secret_in_use(secrets: TokenSecrets, password: str) -> None:
    _usable_tokens(secrets, "http://127.0.0.1", "-of-the-long-run")
    _usable(password, *secrets)
    with capturing() as capture:
        _long_run(capture, secrets, password)
    _assert_tokens_clean(capture, secrets, "oauth2-long-run")
    _assert_clean(capture, password, "oauth2-long-run")


# -- 8e. a password in the token endpoint's URL ------------------------------------------------


@CASES
@given(secret=SECRETS, scheme=st.sampled_from(["https", "http", "ftp"]))
def test_a_password_in_the_token_endpoints_url_is_refused_unseen(secret: str, scheme: str) -> None:
    """urllib takes no user information in a URL (it reads ``alice:pw@host`` as the host, and
    an error named the URL): such a token URL is refused when the source is made, without
    showing the password."""
    _usable(secret, "http://", "https://", "/token", CLIENT_ID)
    url = f"{scheme}://{USER}:{quote(secret, safe='')}@{HOST}:1/token"
    with capturing() as capture:
        with capture.raised(ConfigError):
            RefreshTokenFlow(url, CLIENT_ID, "a-refresh-token", account=USER)
        with capture.raised(ConfigError):
            ClientCredentialsFlow(url, CLIENT_ID, "a-client-secret", account=USER)
    shown = "".join(text for channel, text in capture.texts)
    assert f"{scheme}://{USER}:***@{HOST}:1/token" in shown  # the URL, without the password
    _assert_clean(capture, secret, "token-url")


# -- what leaked (found by this file, fixed since): each a regression test of its own ---------

NON_ASCII_SECRETS: Final = SECRETS.filter(lambda secret: not secret.isascii())
APOSTROPHE_SECRETS: Final = ASCII_SECRETS.map(lambda secret: f"{secret[:4]}'{secret[4:]}").filter(
    lambda secret: '"' not in secret
)
"""With ``'`` and without ``"``: a repr alone puts them in ``"…"``, one in a line with ``"``
escapes the ``'``."""
MOSTLY_ASCII_SECRETS: Final = ASCII_SECRETS.map(lambda secret: f"{secret[:4]}é{secret[4:]}")
"""One letter beyond ASCII: what an ASCII decoding leaves is most of the secret."""
TRAILING_SPACE_SECRETS: Final = SECRETS.map(lambda secret: f"{secret.strip()} ").filter(
    lambda secret: len(secret) >= 9
)
LONG_SECRETS: Final = st.text(st.sampled_from(_LETTERS[:15]), min_size=16, max_size=20).map(
    lambda secret: f"Жя€漢{secret}"
)
"""40 bytes of UTF-8 and more, 4 distinct letters first: cut short, a piece is left."""

_CHAINED: Final = (
    "the exception {library} raised stays on the {ours} as its __context__ "
    "({where}: 'raise ... from None' hides it from tracebacks only), unredacted: {holds}"
)

KNOWN_LEAKS: Final[list[Known]] = [
    Known(
        "imap-login-echoed",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="imaplib/imapclient",
            ours="AuthenticationFailed",
            where="imap/_locked.py LockedClient.call_within",
            holds="LoginError and imaplib.error args hold the server's NO text, here the "
            "echoed LOGIN line with the IMAP-quoted password (for a non-ASCII password, "
            "the UnicodeEncodeError's args hold the quoted password itself)",
        ),
        ASCII_SECRETS,
        lambda capture, secret: _imap_login_echoed(capture, secret),
    ),
    Known(
        "imap-xoauth2-echoed",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="imaplib/imapclient",
            ours="AuthenticationFailed",
            where="imap/_locked.py LockedClient.call_within",
            holds="the server's NO text, here the echoed base64 XOAUTH2 string",
        ),
        SECRETS,
        lambda capture, secret: _xoauth2_echoed(capture, secret),
    ),
    Known(
        ("imap-login-echoed", "imap-echoed-later"),
        "",
        SINGLE,
        "a repr escapes ' only when the text around it holds a \" too: imaplib's trace logs "
        "each line it reads as a bytes repr, and imapclient's errors put b'...' reprs of the "
        "server's NO text in their message; an echoed IMAP quoted string holds a \", so a "
        "secret with ' (and no \") shows as it\\'s..., a form mailtether._redaction does "
        'not know (it takes repr(secret) alone, which Python puts in "..."): in the '
        "imaplib trace (DEBUG), the exception, the status reason, the notification, the logs "
        "and mailtether status",
        APOSTROPHE_SECRETS,
        lambda capture, secret: _imap_login_echoed(capture, secret),
    ),
    Known(
        "imap-echoed-later",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="imaplib",
            ours="FolderMissing (through a CommandFailed)",
            where="imap/_locked.py LockedClient.call_within, imap/_connection.py select",
            holds="the SELECT's NO text, here echoing the secret",
        ),
        SECRETS,
        lambda capture, secret: _imap_echoed_later(capture, secret, "xoauth2", "select"),
    ),
    Known(
        "imap-echoed-later",
        f"{LOG} imapclient.util",
        None,
        "imapclient.util.to_unicode logs a WARNING quoting the raw bytes of a server answer "
        "that is not ASCII (a NO text echoing a non-ASCII secret); the 'imapclient.util' "
        "logger has no redacting filter (imap/_connection.py wraps imapclient.imaplib and "
        "imapclient.imapclient only)",
        NON_ASCII_SECRETS,
        lambda capture, secret: _imap_echoed_later(capture, secret, "xoauth2", "select"),
    ),
    Known(
        "imap-echoed-later",
        "",
        DROPPED,
        "imapclient's to_unicode decodes a NO text as ASCII with errors='ignore': a non-ASCII "
        "secret echoed in it loses its non-ASCII letters, no longer matches, and the rest of "
        "it is shown: in the exception, the status reason, the notification, the logs and "
        "mailtether status",
        MOSTLY_ASCII_SECRETS,
        lambda capture, secret: _imap_echoed_later(capture, secret, "xoauth2", "select"),
    ),
    Known(
        "imap-echoed-later",
        "",
        TRIMMED,
        "imap/_fetch.py reads a NO answer to the sizes FETCH (and to UID SEARCH) as "
        "words.strip(), before any redaction: a secret ending in white space, echoed at the "
        "end of the line, loses it, no longer matches, and is shown in the listener's log "
        "('the server gave no sizes (...)')",
        TRAILING_SPACE_SECRETS,
        lambda capture, secret: _imap_echoed_later(capture, secret, "xoauth2", "fetch"),
    ),
    Known(
        "pop3-pass-echoed",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="poplib",
            ours="AuthenticationFailed",
            where="pop3/_connection.py Pop3Connection.call",
            holds="error_proto's args hold the raw -ERR line, here echoing PASS <password>",
        ),
        SECRETS,
        lambda capture, secret: _pop3_rejected(capture, secret),
    ),
    Known(
        "pop3-echoed-later",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="poplib",
            ours="ConnectionLost",
            where="pop3/_connection.py Pop3Connection.call",
            holds="error_proto's args hold the raw -ERR line of UIDL/LIST, here echoing the "
            "password",
        ),
        SECRETS,
        lambda capture, secret: _pop3_echoed_later(capture, secret, "refused"),
    ),
    Known(
        "pop3-echoed-later",
        "",
        "UTF-8 decoded as ASCII",
        "pop3/_poller.py _numbered quotes a malformed UIDL/LIST line as "
        "line[:80].decode('ascii', 'replace'): a non-ASCII secret in it, its letters turned "
        "into U+FFFD, is not redacted: in the MalformedReply, the status reason, the "
        "notification, the logs and mailtether status",
        MOSTLY_ASCII_SECRETS,
        lambda capture, secret: _pop3_echoed_later(capture, secret, "garbled"),
    ),
    Known(
        "pop3-echoed-later",
        f"{CLI} check",
        PIECE,
        "pop3/_probe.py Pop3Probe.login returns answer[:60] as the login step's detail: a "
        "+OK answer that echoes the password is cut at 60 bytes before it is redacted, so "
        "the part of the password before the cut is shown by mailtether check (text and "
        "--json)",
        LONG_SECRETS,
        lambda capture, secret: _pop3_echoed_later(capture, secret, "refused"),
    ),
    Known(
        "store-postgres",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="psycopg",
            ours="StoreError",
            where="stores/_postgres.py PostgresStore._run",
            holds="OperationalError's message quotes the server's FATAL text, here echoing "
            "the password",
        ),
        SECRETS,
        lambda capture, secret: _store(capture, secret, "postgres-echo"),
    ),
    Known(
        "store-postgres",
        (SHOWN, CLI),
        TRIMMED,
        "libpq trims the white space at the end of the server's message before psycopg "
        "raises it: a password ending in white space, echoed at the end of the FATAL text, "
        "no longer matches and is shown without it, by the StoreError "
        "(stores/_postgres.py PostgresStore._run) and mailtether status",
        TRAILING_SPACE_SECRETS,
        lambda capture, secret: _store(capture, secret, "postgres-echo"),
    ),
    Known(
        "store-redis",
        (f"{SHOWN}: __cause__", f"{SHOWN}: traceback", SUPPRESSED),
        None,
        "stores/_redis.py RedisStore._run raises StoreError 'from error': redis-py's "
        "AuthenticationError, with the server's error text (here echoing AUTH <password>) "
        "unredacted, is the StoreError's __cause__ and is printed in every traceback of it",
        SECRETS,
        lambda capture, secret: _store(capture, secret, "redis-echo"),
    ),
    Known(
        "store-redis",
        f"{LOG} redis.",
        None,
        "redis-py logs (DEBUG, logger redis.connection) 'AuthenticationError while reading "
        "response ... error: <the server's text>' with the server's text unredacted (here "
        "echoing AUTH <password>): a library mailtether calls, whose logger it does not wrap",
        SECRETS,
        lambda capture, secret: _store(capture, secret, "redis-echo"),
    ),
    Known(
        "dovecot",
        SUPPRESSED,
        None,
        _CHAINED.format(
            library="imaplib",
            ours="CommandFailed",
            where="imap/_locked.py LockedClient.call_within",
            holds="a non-ASCII password cannot be sent in LOGIN (imaplib encodes it as "
            "ASCII): the UnicodeEncodeError's args hold the IMAP-quoted password",
        ),
        NON_ASCII_SECRETS,
        None,
    ),
]
"""Every leak found, with its scenario, channel and form; the main tests check all else."""


def _xfail(known: Known) -> Any:
    """Each leak found is fixed: its scenario stays as a test that it does not come back."""
    return pytest.param(known, id=f"{KNOWN_LEAKS.index(known)}")


@pytest.mark.parametrize("known", [_xfail(known) for known in KNOWN_LEAKS if known.drive])
@LEAK_CASES
@given(data=st.data())
def test_known_leak(known: Known, data: st.DataObject) -> None:
    secret = data.draw(known.secrets, label="secret")
    _usable(secret)
    assert known.drive is not None
    with capturing() as capture:
        known.drive(capture, secret)
    _assert_not_known(capture, secret, known)


@pytest.mark.parametrize("known", [_xfail(known) for known in KNOWN_LEAKS if not known.drive])
@LEAK_CASES
@given(data=st.data())
def test_known_dovecot_leak(known: Known, data: st.DataObject, mailbox: Any, tls_ca: Any) -> None:
    secret = data.draw(known.secrets, label="secret")
    _usable(secret, mailbox.user)
    with capturing() as capture:
        _dovecot_login(capture, secret, mailbox.server, tls_ca, mailbox.user)
    _assert_not_known(capture, secret, known, mailbox.user)
