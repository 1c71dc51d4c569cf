"""Secrets never leave the process, in any form (issue 17): a property test of every channel.

Random secrets (8 to 24 characters from the whole printable range: quotes, backslashes,
``/?#@:%``, spaces, letters beyond ASCII) are used as the IMAP password, the XOAUTH2 token,
the POP3 password and a store URL's password. Servers that echo what they were sent — in
the answer that rejects the login, and in later answers of a session they accepted — and a
real Dovecot that rejects them are driven through every way the library talks:

- exceptions: ``str``, ``repr``, ``args``, the traceback, and every exception chained to
  them (``__cause__``, ``__context__``);
- every log record at DEBUG (imaplib's protocol trace on), formatted with its traceback,
  and the exception object a record carries;
- status: the board's reasons, and what notifiers are told;
- the command line: ``check`` and ``status`` (the held messages too), text and ``--json``.

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
else, and ``test_known_leak`` checks each of those cases on its own, so none comes back.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import functools
import importlib
import io
import json
import logging
import re
import socket
import struct
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from helpers import eventually
from mailtether import (
    AuthenticationFailed,
    ConnectionLost,
    Fixed,
    FolderMissing,
    ImapConnection,
    ImapListener,
    ImapSettings,
    Keepalive,
    LoggingNotifier,
    MailServerError,
    MalformedReply,
    Pop3Poller,
    SourceState,
    SQLiteStore,
    StatusBoard,
    StatusChange,
    StoreError,
    store_from_url,
)
from mailtether._redaction import _SECRETS
from mailtether.cli._main import main
from mailtether.pop3._connection import Pop3Connection
from mailtether.testing import ScriptedImapServer
from scripted import Answer, Scripted

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
    corpus = _corpus()
    assume(not any(secret[i : i + 8] in corpus for i in range(len(secret) - 7)))
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
) -> str:
    """``poll_once``, then run in a thread until the status is one of *states* (and after
    *catch_ups* catch-ups); then ``mailtether status``, text and JSON: the text.

    The status lives in a SQLite store; notifications go to the capture and to a
    :class:`LoggingNotifier`.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.db"
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
    assert ("malformed line" if where == "garbled" else "no listing: ***") in shown
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


class _EchoServer:
    """A server on loopback that answers each connection with *answer*(socket)."""

    def __init__(self, answer: Callable[[socket.socket], bytes]) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, struct.error):
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
