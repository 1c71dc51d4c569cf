"""ScriptedImapServer: IMAP4rev1 enough for imapclient and ImapListener; each fault as documented.

How the listener should react to the faults is tested elsewhere; here each fault is shown to
happen on the wire (a raw socket) and as plain imapclient sees it.
"""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError, ProtocolError

from helpers import Collector, eventually
from mailtether import Fixed, ImapListener, ImapSettings, Keepalive, MemoryStore
from mailtether.testing import ScriptedImapServer

USER, PASSWORD = "someone", "a-secret"


def mail(n: int) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: support@example.com\r\n"
        f"Message-ID: <m{n}@example.com>\r\nSubject: mail {n}\r\n\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def server() -> Iterator[ScriptedImapServer]:
    with ScriptedImapServer(
        user=USER, password=PASSWORD, uidvalidity=7, folders=["Archive"]
    ) as running:
        yield running


@pytest.fixture
def filled(server: ScriptedImapServer) -> ScriptedImapServer:
    for n in (1, 2, 3):
        server.append(mail(n))
    return server


Connect = Callable[..., IMAPClient]


@pytest.fixture
def connect(server: ScriptedImapServer) -> Iterator[Connect]:
    opened: list[IMAPClient] = []

    def make(
        *, timeout: float = 5, login: bool = True, select: bool = True, **kwargs: object
    ) -> IMAPClient:
        client = IMAPClient(server.host, port=server.port, ssl=False, timeout=timeout, **kwargs)
        opened.append(client)
        if login:
            client.login(USER, PASSWORD)
        if login and select:
            client.select_folder("INBOX")
        return client

    yield make
    for client in opened:
        with contextlib.suppress(Exception):
            client.shutdown()


class Wire:
    """A raw connection, to see exactly what the server sends."""

    def __init__(self, server: ScriptedImapServer, timeout: float = 5) -> None:
        self.sock = socket.create_connection(server.address, timeout=timeout)
        self.buffer = b""
        assert self.until(b"\r\n") == b"* OK ScriptedImapServer ready\r\n"

    def close(self) -> None:
        self.sock.close()

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def until(self, marker: bytes) -> bytes:
        """Everything up to and including *marker*."""
        while marker not in self.buffer:
            if not self.recv():
                raise AssertionError(f"EOF before {marker!r}; got {self.buffer!r}")
        end = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def command(self, tag: str, text: str) -> bytes:
        """Send a command; return everything up to and including its tagged answer."""
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        pattern = re.compile(rb"(?:^|\r\n)" + tag.encode() + rb" (OK|NO|BAD)[^\r\n]*\r\n")
        while (match := pattern.search(self.buffer)) is None:
            if not self.recv():
                raise AssertionError(f"EOF before the answer to {tag}; got {self.buffer!r}")
        data, self.buffer = self.buffer[: match.end()], self.buffer[match.end() :]
        return data

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while self.recv():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def selected(self) -> Wire:
        assert b"a OK" in self.command("a", f"LOGIN {USER} {PASSWORD}")
        assert b"b OK [READ-WRITE]" in self.command("b", "SELECT INBOX")
        return self


@pytest.fixture
def wire(server: ScriptedImapServer) -> Iterator[Callable[..., Wire]]:
    opened: list[Wire] = []

    def make(timeout: float = 5) -> Wire:
        opened.append(Wire(server, timeout))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


# -- the protocol ---------------------------------------------------------------------------------


def test_select_and_examine_report_the_folder(filled, connect):
    client = connect(select=False)
    answer = client.select_folder("INBOX")
    assert answer[b"EXISTS"] == 3
    assert answer[b"RECENT"] == 3
    assert answer[b"UIDVALIDITY"] == 7
    assert answer[b"UIDNEXT"] == 4
    assert answer[b"READ-WRITE"] is True
    assert b"\\Seen" in answer[b"FLAGS"]
    assert client.select_folder("INBOX", readonly=True)[b"READ-ONLY"] == [b""]
    with pytest.raises(IMAPClientError, match="NONEXISTENT"):
        client.select_folder("Nowhere")


def test_a_wrong_password_is_refused_and_no_password_is_logged(server, connect):
    client = connect(select=False, login=False)
    with pytest.raises(LoginError, match=re.escape("[AUTHENTICATIONFAILED]")):
        client.login(USER, "wrong")
    client.login(USER, PASSWORD)  # the same connection may try again
    connect(select=False, login=False).plain_login(USER, PASSWORD)
    with pytest.raises(LoginError, match=re.escape("[AUTHENTICATIONFAILED]")):
        connect(select=False, login=False).plain_login(USER, "wrong")
    assert server.commands.count("LOGIN someone ***") == 2
    assert server.commands.count("AUTHENTICATE PLAIN") == 2
    assert not [command for command in server.commands if PASSWORD in command or "wrong" in command]


def test_search_by_uid_flags_and_sequence_number(filled, connect):
    client = connect()
    client.add_flags([2], [b"\\Seen"])
    assert client.search(["ALL"]) == [1, 2, 3]
    assert client.search(["UID", "2:*"]) == [2, 3]
    assert client.search(["UID", "9:*"]) == [3]  # n:* always holds the newest mail
    assert client.search(["UID", "2"]) == [2]
    assert client.search(["UNSEEN"]) == [1, 3]
    assert client.search(["SEEN"]) == [2]
    assert client.search(["NOT", "SEEN", "SUBJECT", "mail 3"]) == [3]
    assert client.search(["OR", "UID", "1", "UID", "3"]) == [1, 3]
    by_number = connect(use_uid=False)
    by_number.delete_messages([1])  # by sequence number from here on
    by_number.expunge()
    assert by_number.search(["ALL"]) == [1, 2]  # UIDs 2 and 3
    assert by_number.search(["2:*"]) == [2]
    assert client.search(["ALL"]) == [2, 3]


def test_fetch_answers_what_is_asked(filled, connect):
    client = connect()
    items = ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER]", "BODY.PEEK[]"]
    answer = client.fetch([1, 2], items)
    assert sorted(answer) == [1, 2]
    first = answer[1]
    assert first[b"FLAGS"] == ()
    assert first[b"RFC822.SIZE"] == len(mail(1))
    assert isinstance(first[b"INTERNALDATE"], datetime.datetime)
    assert first[b"BODY[HEADER]"] == mail(1).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert first[b"BODY[]"] == mail(1)
    assert filled.flags(1) == frozenset()  # PEEK leaves \Seen alone
    assert client.fetch([1], ["BODY[]"])[1][b"BODY[]"] == mail(1)
    assert client.fetch([2], ["RFC822"])[2][b"RFC822"] == mail(2)
    assert filled.flags(1) == filled.flags(2) == frozenset({b"\\Seen"})
    assert filled.flags(3) == frozenset()
    fields = client.fetch([3], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[3]
    assert fields[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: mail 3\r\n\r\n"
    by_number = connect(use_uid=False).fetch([3], ["UID", "FLAGS"])
    assert by_number == {3: {b"SEQ": 3, b"UID": 3, b"FLAGS": ()}}


def test_a_fetch_answer_is_uid_first_then_the_items_as_asked(filled, wire):
    raw = mail(2)
    answer = wire().selected().command("c", "UID FETCH 2 (BODY.PEEK[] FLAGS)")
    assert answer == (
        b"* 2 FETCH (UID 2 BODY[] {%d}\r\n%s FLAGS ())\r\nc OK Fetch completed\r\n"
        % (len(raw), raw)
    )


def test_store_sets_and_clears_flags(filled, connect):
    client = connect()
    assert client.add_flags([1, 2], [b"\\Flagged", b"$Label"]) == {
        1: (b"$Label", b"\\Flagged"),
        2: (b"$Label", b"\\Flagged"),
    }
    assert client.remove_flags([1], [b"$Label"]) == {1: (b"\\Flagged",)}
    assert client.set_flags([2], [b"\\Seen"]) == {2: (b"\\Seen",)}
    assert client.add_flags([3], [b"\\Answered"], silent=True) is None
    assert [filled.flags(uid) for uid in (1, 2, 3)] == [
        {b"\\Flagged"},
        {b"\\Seen"},
        {b"\\Answered"},
    ]


def test_move_copy_and_expunge(filled, connect):
    client = connect()
    client.move([1], "Archive")
    assert filled.uids() == [2, 3]
    assert filled.folder_uids("Archive") == [1]
    client.copy([2], "Archive")
    assert filled.uids() == [2, 3]
    assert filled.folder_uids("Archive") == [1, 2]
    with pytest.raises(IMAPClientError, match="TRYCREATE"):
        client.move([2], "Nowhere")
    client.delete_messages([2, 3])
    client.uid_expunge([2])
    assert filled.uids() == [3]
    client.close_folder()  # CLOSE expunges the rest of the \Deleted
    assert filled.uids() == []
    assert client.select_folder("Archive")[b"EXISTS"] == 2
    assert client.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"] == mail(1)
    with pytest.raises(KeyError, match="Elsewhere"):
        filled.folder_uids("Elsewhere")


def test_expunge_tells_the_client_which_mails_went(filled, connect):
    client = connect()
    client.delete_messages([1, 3])
    client.use_uid = False
    # UID 1 is number 1; then UID 3, number 3 before, is number 2 once 1 has gone.
    assert client.expunge() == (b"Expunge completed", [(1, b"EXPUNGE"), (2, b"EXPUNGE")])


def test_status_list_create_and_append(filled, connect):
    client = connect(select=False)
    assert client.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]) == {
        b"MESSAGES": 3,
        b"UIDNEXT": 4,
        b"UIDVALIDITY": 7,
        b"UNSEEN": 3,
    }
    client.create_folder("Done")
    assert sorted(name for _, _, name in client.list_folders()) == ["Archive", "Done", "INBOX"]
    answer = client.append("INBOX", mail(4), flags=[b"\\Seen"])
    assert answer == b"[APPENDUID 7 4] Append completed"
    assert filled.uids() == [1, 2, 3, 4]
    assert filled.flags(4) == {b"\\Seen"}
    assert filled.message(4) == mail(4)
    assert f'APPEND "INBOX" (\\Seen) {{{len(mail(4))}}}' in filled.commands


def test_idle_hears_appends_and_expunges_at_once(filled, connect):
    client = connect()
    client.idle()
    appender = threading.Thread(target=filled.append, args=(mail(4),))
    appender.start()
    appender.join()
    assert idle_responses(client, 1) == [(4, b"EXISTS")]
    filled.expunge(1)
    assert idle_responses(client, 1) == [(1, b"EXPUNGE")]
    assert client.idle_done() == (b"Idle completed", [])
    assert client.search(["ALL"]) == [2, 3, 4]
    assert filled.commands[-3:] == ["IDLE", "DONE", "UID SEARCH ALL"]


def test_several_connections_at_once(filled, connect):
    first, second = connect(), connect()
    first.idle()
    second.add_flags([2], [b"\\Seen"])
    second.append("INBOX", mail(4))
    assert idle_responses(first, 1) == [(4, b"EXISTS")]
    first.idle_done()
    assert first.search(["SEEN"]) == [2]
    assert filled.connections == 2
    assert filled.open_connections == 2
    second.logout()
    eventually(lambda: filled.open_connections == 1)
    assert filled.connections == 2


def test_unknown_and_out_of_place_commands_are_bad(server, wire):
    raw = wire()
    assert raw.command("a", "SELECT INBOX") == b"a BAD log in first\r\n"
    assert raw.command("b", "XYZZY") == b"b BAD unknown command\r\n"
    assert raw.command("c", f"LOGIN {USER} {PASSWORD}") == b"c OK Logged in\r\n"
    assert raw.command("d", "UID FETCH 1 (FLAGS)") == b"d BAD select a folder first\r\n"
    assert raw.command("e", "SELECT (INBOX") == b"e BAD unbalanced parentheses\r\n"
    assert raw.command("f", "NOOP") == b"f OK NOOP completed\r\n"
    assert server.commands[-1] == "NOOP"


def test_a_command_line_is_read_with_a_bound(server, wire):
    raw = wire()
    raw.sock.sendall(b"a NOOP " + b"x" * 70_000)
    assert raw.rest() == b"* BYE command line too long (more than 65536 bytes)\r\n"


def test_capabilities_can_be_narrowed(wire):
    with ScriptedImapServer(user=USER, password=PASSWORD, capabilities=["UIDPLUS"]) as plain:
        client = IMAPClient(plain.host, port=plain.port, ssl=False, timeout=5)
        assert client.capabilities() == (b"IMAP4REV1", b"UIDPLUS")
        client.login(USER, PASSWORD)
        client.select_folder("INBOX")
        raw = Wire(plain).selected()
        assert raw.command("c", "IDLE") == b"c BAD unknown command\r\n"
        assert raw.command("d", "UID MOVE 1 Archive") == b"d BAD unknown command\r\n"
        raw.close()
        client.logout()


def test_stop_closes_every_connection_even_a_silent_one(filled, wire):
    filled.never_answer("NOOP")
    raw = wire().selected()
    raw.sock.sendall(b"c NOOP\r\n")
    started = time.monotonic()
    filled.stop()
    assert time.monotonic() - started < 3
    assert raw.rest() == b""
    assert filled.open_connections == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.omit_from_fetch(0), "uid"),
        (lambda s: s.fetch_no(1, text=""), "text"),
        (lambda s: s.fetch_no(1, times=0), "times"),
        (lambda s: s.malformed_item(1, how="sideways"), "how"),
        (lambda s: s.huge_literal(1, announced=-1), "announced"),
        (lambda s: s.huge_literal(1, then="explode"), "then"),
        (lambda s: s.bye_during_fetch(after_items=-1), "after_items"),
        (lambda s: s.flood_expunge(0), "count"),
        (lambda s: s.never_answer("FETCH *"), "command"),
        (lambda s: s.split_writes(0), "size"),
        (lambda s: s.answer_out_of_order(-1), "wait"),
        (lambda s: s.change_uidvalidity(2**32), "uidvalidity"),
        (lambda s: s.append("text"), "raw"),
        (lambda s: s.append(b"x", flags=[b"\\Recent"]), "flags"),
    ],
)
def test_arguments_are_checked(server, call, message):
    with pytest.raises(ValueError, match=message):
        call(server)


def test_unknown_uids_are_named():
    server = ScriptedImapServer(user=USER, password=PASSWORD)
    with pytest.raises(KeyError, match="no mail with UID 5"):
        server.flags(5)
    with pytest.raises(KeyError, match="no mail with UID 5"):
        server.expunge(5)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


# -- a real listener ------------------------------------------------------------------------------


def test_the_listener_handles_appended_mail_once_and_marks_it_seen(filled):
    handler = Collector()
    settings = ImapSettings(
        filled.host, USER, PASSWORD, port=filled.port, security="plain", connect_timeout=2
    )
    listener = ImapListener(
        settings,
        handler,
        store=MemoryStore(),
        lease_ttl=None,
        poll_interval=0.3,
        heartbeat=None,
        reconnect=Fixed(0.2),
        keepalive=Keepalive(noop_interval=1, idle_renewal=1, response_timeout=1),
    )
    listener.run_in_thread()
    try:
        eventually(lambda: len(handler.handled) == 3)
        filled.append(mail(4))
        filled.append(mail(5), flags=[b"\\Flagged"])
        eventually(lambda: len(handler.handled) == 5)
        assert listener.wait_for_catch_ups(2, timeout=10)  # more rounds: nothing handled again
        assert handler.count() == Counter(f"mail {n}" for n in range(1, 6))
        assert [filled.flags(uid) for uid in filled.uids()] == [{b"\\Seen"}] * 4 + [
            {b"\\Seen", b"\\Flagged"}
        ]
        assert "IDLE" in filled.commands  # it waited for mail the way it does on Dovecot
        assert filled.connections == 1
    finally:
        listener.stop()


# -- the faults, each as documented ---------------------------------------------------------------


def test_omit_from_fetch_leaves_the_mail_out_and_answers_ok(filled, connect, wire):
    filled.omit_from_fetch(2, times=2)
    client = connect()
    assert sorted(client.fetch([1, 2, 3], ["FLAGS"])) == [1, 3]
    answer = wire().selected().command("c", "UID FETCH 1:3 (FLAGS)")
    assert answer == (
        b"* 1 FETCH (UID 1 FLAGS ())\r\n* 3 FETCH (UID 3 FLAGS ())\r\nc OK Fetch completed\r\n"
    )
    assert sorted(client.fetch([1, 2, 3], ["FLAGS"])) == [1, 2, 3]  # times=2: used up
    assert sorted(client.fetch([1, 3], ["FLAGS"])) == [1, 3]


def test_fetch_no_sends_the_other_mails_then_no(filled, connect, wire):
    filled.fetch_no(2)
    answer = wire().selected().command("c", "UID FETCH 1:3 (FLAGS)")
    assert answer == (
        b"* 1 FETCH (UID 1 FLAGS ())\r\n* 3 FETCH (UID 3 FLAGS ())\r\n"
        b"c NO [SERVERBUG] Some messages could not be FETCHed\r\n"
    )
    client = connect()
    with pytest.raises(IMAPClientError, match=re.escape("Some messages could not be FETCHed")):
        client.fetch([1, 2], ["BODY.PEEK[]"])
    assert sorted(client.fetch([1, 3], ["FLAGS"])) == [1, 3]  # a FETCH without it is fine
    filled.fetch_no(3, text="[UNAVAILABLE] try later", times=1)
    with pytest.raises(IMAPClientError, match=re.escape("[UNAVAILABLE] try later")):
        client.fetch([3], ["FLAGS"])
    filled.clear_faults()
    assert sorted(client.fetch([1, 2, 3], ["FLAGS"])) == [1, 2, 3]


def test_malformed_item_leaves_a_parenthesis_open(filled, connect, wire):
    filled.malformed_item(2, times=2)
    answer = wire().selected().command("c", "UID FETCH 2:3 (FLAGS BODY.PEEK[])")
    assert answer == b"* 2 FETCH (UID 2 FLAGS () BODY[] {%d}\r\n%s\r\n" % (
        len(mail(2)),
        mail(2),
    ) + b"* 3 FETCH (UID 3 FLAGS () BODY[] {%d}\r\n%s)\r\nc OK Fetch completed\r\n" % (
        len(mail(3)),
        mail(3),
    )
    with pytest.raises(ProtocolError):
        connect().fetch([1, 2, 3], ["BODY.PEEK[]"])
    assert sorted(connect().fetch([1, 2, 3], ["BODY.PEEK[]"])) == [1, 2, 3]


def test_malformed_item_can_cut_a_literal_short(filled, connect, wire):
    filled.malformed_item(2, how="literal")
    raw = wire().selected()
    assert raw.command("c", "UID FETCH 2 (FLAGS)") == (  # no body asked: nothing to garble
        b"* 2 FETCH (UID 2 FLAGS ())\r\nc OK Fetch completed\r\n"
    )
    half = len(mail(2)) // 2
    assert raw.command("d", "UID FETCH 2 (BODY.PEEK[])") == (
        b"* 2 FETCH (UID 2 BODY[] {%d}\r\n%s)\r\nd OK Fetch completed\r\n" % (half, mail(2))
    )
    with pytest.raises(imaplib.IMAP4.abort, match="unexpected response"):
        connect().fetch([1, 2, 3], ["BODY.PEEK[]", "FLAGS"])


def test_huge_literal_announces_it_sends_a_little_and_stalls(filled, connect, wire):
    filled.huge_literal(2, times=1)
    raw = wire(timeout=0.5).selected()
    raw.sock.sendall(b"c UID FETCH 1:3 (BODY.PEEK[])\r\n")
    assert raw.until(b"{2000000000}\r\n") == (
        b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s)\r\n* 2 FETCH (UID 2 BODY[] {2000000000}\r\n"
        % (len(mail(1)), mail(1))
    )
    with pytest.raises(TimeoutError):
        raw.until(b"c OK")
    assert raw.buffer == mail(2)  # all of it, as it is under 1 KiB, and then nothing
    raw.sock.sendall(b"d NOOP\r\n")  # nor to anything else
    with pytest.raises(TimeoutError):
        raw.recv()
    assert sorted(connect().fetch([1, 2, 3], ["BODY.PEEK[]"])) == [1, 2, 3]  # times=1


def test_huge_literal_can_close_and_sends_at_most_a_kilobyte(server, wire):
    big = b"Subject: big\r\n\r\n" + b"x" * 5000
    server.append(big)
    server.huge_literal(1, announced=10_000_000, then="close")
    raw = wire().selected()
    assert raw.command("c", "UID FETCH 1 (FLAGS)").startswith(b"* 1 FETCH")  # no body asked
    raw.sock.sendall(b"d UID FETCH 1 (RFC822.SIZE BODY.PEEK[])\r\n")
    assert raw.rest() == b"* 1 FETCH (UID 1 RFC822.SIZE 5016 BODY[] {10000000}\r\n" + big[:1024]


def test_bye_during_fetch_closes_after_the_items(filled, connect, wire):
    filled.bye_during_fetch(after_items=1)
    raw = wire().selected()
    raw.sock.sendall(b"c UID FETCH 1:3 (FLAGS)\r\n")
    assert raw.rest() == (
        b"* 1 FETCH (UID 1 FLAGS ())\r\n* BYE the server goes away in the middle of a FETCH\r\n"
    )
    assert sorted(connect().fetch([1, 2, 3], ["FLAGS"])) == [1, 2, 3]  # times=1 by default
    filled.bye_during_fetch(after_items=5, times=None)  # more than there are: BYE at the end
    with pytest.raises(imaplib.IMAP4.abort):
        connect().fetch([1, 2, 3], ["FLAGS"])
    with pytest.raises(imaplib.IMAP4.abort):
        connect().fetch([1], ["FLAGS"])


def test_change_uidvalidity_numbers_the_mails_again_and_drops_the_selected(filled, connect, wire):
    filled.expunge(1)
    raw = wire().selected()
    idle = connect()
    idle.idle()
    filled.change_uidvalidity(9)
    assert filled.uids() == [1, 2]
    assert filled.message(1) == mail(2)
    assert idle_responses(idle, 1)[0][:3] == (b"BYE", b"UIDVALIDITY", b"changed:")
    raw.sock.sendall(b"c NOOP\r\n")
    assert raw.rest() == b"* BYE UIDVALIDITY changed: select the folder again\r\n"
    client = connect(select=False)
    answer = client.select_folder("INBOX")
    assert (answer[b"UIDVALIDITY"], answer[b"UIDNEXT"], answer[b"EXISTS"]) == (9, 3, 2)
    assert client.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"] == mail(2)
    assert client.noop()[0] == b"NOOP completed"  # selected after the change: not dropped


def test_flood_expunge_puts_pairs_in_the_next_response_once(filled, connect, wire):
    raw = wire().selected()
    filled.flood_expunge(1000)
    answer = raw.command("c", "NOOP")
    assert answer == b"* 4 EXISTS\r\n* 4 EXPUNGE\r\n" * 1000 + b"c OK NOOP completed\r\n"
    assert raw.command("d", "NOOP") == b"d OK NOOP completed\r\n"
    assert filled.uids() == [1, 2, 3]
    client = connect()
    client.idle()
    filled.flood_expunge(3)  # an IDLE connection gets it at once
    assert idle_responses(client, 6) == [(4, b"EXISTS"), (4, b"EXPUNGE")] * 3
    client.idle_done()
    assert client.search(["ALL"]) == [1, 2, 3]


def test_never_answer_swallows_the_command_and_all_after_it(filled, connect, wire):
    filled.never_answer("FETCH", times=1)
    raw = wire(timeout=0.5).selected()
    assert raw.command("c", "UID SEARCH ALL") == b"* SEARCH 1 2 3\r\nc OK Search completed\r\n"
    raw.sock.sendall(b"d UID FETCH 1 (FLAGS)\r\n")
    with pytest.raises(TimeoutError):
        raw.recv()
    raw.sock.sendall(b"e NOOP\r\n")
    with pytest.raises(TimeoutError):
        raw.recv()
    assert filled.commands[-1] == "UID FETCH 1 (FLAGS)"  # the NOOP was not even read as one
    assert sorted(connect().fetch([1], ["FLAGS"])) == [1]  # times=1: used up


def test_never_answer_can_swallow_an_idle_or_its_end(filled, connect):
    filled.never_answer("IDLE", times=1)
    with pytest.raises(TimeoutError):
        connect(timeout=0.5).idle()  # not even "+ idling" comes back
    filled.never_answer("DONE", times=1)
    client = connect(timeout=0.5)
    client.idle()
    with pytest.raises(TimeoutError):
        client.idle_done()  # the IDLE never ends
    assert filled.commands[-2:] == ["IDLE", "DONE"]
    assert filled.commands.count("IDLE") == 2


def test_never_answer_matches_the_uid_form_only_when_told(filled, connect):
    filled.never_answer("UID FETCH")
    by_number = connect(use_uid=False, timeout=0.5)
    assert by_number.fetch([1], ["FLAGS"]) == {1: {b"SEQ": 1, b"FLAGS": ()}}
    with pytest.raises(TimeoutError):
        connect(timeout=0.5).fetch([1], ["FLAGS"])


def test_split_writes_sends_every_answer_in_pieces(filled, connect, wire):
    filled.split_writes(size=4, pause=0.02)
    started = time.monotonic()
    raw = wire()  # the greeting has 31 bytes: 8 pieces, 7 pauses between them
    assert time.monotonic() - started >= 7 * 0.02
    assert raw.command("a", "NOOP") == b"a OK NOOP completed\r\n"
    filled.split_writes(size=1)
    client = connect()
    assert client.fetch([1, 2], ["BODY.PEEK[]"])[2][b"BODY[]"] == mail(2)
    filled.split_writes(size=1, pause=0.5)  # 15 s for a greeting ...
    filled.clear_faults()
    started = time.monotonic()
    wire()
    assert time.monotonic() - started < 5  # ... unless cleared


def test_answer_out_of_order_mixes_the_answers_of_pipelined_commands(filled, wire):
    filled.answer_out_of_order(wait=5)
    raw = wire().selected()
    # A FETCH and a STORE sent together: the STORE's OK comes amid the FETCH's items.
    raw.sock.sendall(b"f UID FETCH 1:3 (FLAGS)\r\ns UID STORE 3 +FLAGS.SILENT (\\Seen)\r\n")
    answer = raw.until(b"f OK")
    assert answer.index(b"s OK") < answer.index(b"* 2 FETCH"), answer
    assert answer.index(b"* 1 FETCH") < answer.index(b"s OK"), answer
    # A STORE and a FETCH: the FETCH's whole answer comes before the STORE's OK.
    raw.until(b"\r\n")
    raw.sock.sendall(b"t UID STORE 1 +FLAGS.SILENT (\\Seen)\r\ng UID FETCH 2 (FLAGS)\r\n")
    answer = raw.until(b"t OK")
    assert answer.index(b"g OK") < answer.index(b"t OK"), answer
    assert b"* 2 FETCH" in answer
    filled.clear_faults()
    started = time.monotonic()
    assert b"h OK" in raw.command("h", "UID STORE 2 +FLAGS.SILENT (\\Seen)")
    assert time.monotonic() - started < 4, "cleared: no wait for a next command"


def idle_responses(client: IMAPClient, count: int) -> list[object]:
    """What an IDLE connection hears, until *count* responses (within 10 s)."""
    heard: list[object] = []
    deadline = time.monotonic() + 10
    while len(heard) < count and time.monotonic() < deadline:
        heard += client.idle_check(timeout=1)
    return heard
