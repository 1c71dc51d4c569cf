"""The mail pipeline over a mailbox kept in memory: the MailboxPort contract, rule by rule.

The in-memory mailbox is a real implementation of the port (what a new kind of source
writes), not a mock: every rule here is also covered against Dovecot by the listener and
poller tests; this file pins each rule to the pipeline alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest

import mailtether._pipeline as pipeline_module
from mailtether import (
    CommandFailed,
    ConnectionLost,
    Delivery,
    DuplicateGuard,
    GuardState,
    LeaseLost,
    MemoryStore,
    MessageKey,
    StatusBoard,
)
from mailtether._handover import Handover
from mailtether._mailbox_port import LEAVE, FetchedMail, Listed, PostAction
from mailtether._pipeline import Pipeline
from mailtether.testing import FakeClock

SEEN = PostAction("seen")


class MemoryMailbox:
    """An IMAP-like folder in memory: UIDs only grow; post-actions are recorded."""

    def __init__(self, guard: DuplicateGuard, *, uses_cursor: bool = True) -> None:
        self.guard = guard
        self.mails: dict[int, bytes] = {}
        self.applied: list[tuple[tuple[int, ...], str]] = []
        self.confirmed: list[tuple[int, ...]] = []
        self.states_when_applied: list[str] = []
        self.uses_cursor = uses_cursor
        self.base = MessageKey.imap("a@example.com", "INBOX", 7, 1)
        self.scope = self.base.scope
        self.listed_after: list[int] = []
        self.omit: set[int] = set()  # left out of every fetch answer (still in the mailbox)
        self.refuse: set[int] = set()  # a fetch that asks for one of these fails (NO)
        self.breaks: set[int] = set()  # a fetch that asks for one of these breaks the link
        self.fetches: list[tuple[int, ...]] = []
        self.sized: list[tuple[int, ...]] = []
        self.size_of: dict[int, int] = {}  # sizes the server gives, where not the real one

    def add(self, uid: int, text: str) -> None:
        self.mails[uid] = f"Message-ID: <{text}@x>\r\nSubject: {text}\r\n\r\n{text}\r\n".encode()

    def list_new(self, after: int) -> list[Listed]:
        self.listed_after.append(after)
        return [Listed(uid, self.base.with_uid(uid)) for uid in sorted(self.mails) if uid > after]

    def locate(self, key: MessageKey) -> int | None:
        return key.uid if key.uid in self.mails else None

    def fetch(self, positions: Sequence[int]) -> Callable[[], Mapping[int, FetchedMail]]:
        self.fetches.append(tuple(positions))

        def answer() -> Mapping[int, FetchedMail]:
            if self.breaks & set(positions):
                raise ConnectionLost("fetching new mail: the connection broke (garbage)")
            if self.refuse & set(positions):
                raise CommandFailed("fetching new mail: the server said NO [SERVERBUG]\r\nboom")
            return {
                p: (self.mails[p], ()) for p in positions if p in self.mails and p not in self.omit
            }

        return answer

    def present(self, positions: Sequence[int]) -> set[int]:
        return set(positions) & set(self.mails)

    def sizes(self, positions: Sequence[int]) -> Callable[[], Mapping[int, int]]:
        self.sized.append(tuple(positions))
        found = {p: self.size_of.get(p, len(self.mails[p])) for p in positions if p in self.mails}
        return lambda: found

    def describe(self, position: int) -> str:
        return f"UID {position}"

    def apply(self, positions: Sequence[int], action: PostAction) -> Callable[[], None]:
        self.applied.append((tuple(positions), str(action)))
        for position in positions:
            entry = self.guard.lookup(self.base.with_uid(position))
            self.states_when_applied.append(entry.state if entry else "unknown")
        return lambda: self.confirmed.append(tuple(positions))


def make(
    handler: Callable[[Delivery], object],
    *,
    max_failures: int = 3,
    repeat: str = "block",
    on_poison: PostAction = LEAVE,
    uses_cursor: bool = True,
) -> tuple[Pipeline, MemoryMailbox]:
    store = MemoryStore()
    guard = DuplicateGuard(store, max_failures=max_failures, repeat=repeat)  # type: ignore[arg-type]
    clock = FakeClock()
    pipeline = Pipeline(
        name="test",
        store=store,
        guard=guard,
        status=StatusBoard(store, clock=clock),
        clock=clock,
        after=SEEN,
        on_poison=on_poison,
        handover=Handover(handler, "message", store),
        commit_window=0.01,
    )
    return pipeline, MemoryMailbox(guard, uses_cursor=uses_cursor)


def subjects(seen: list[Delivery]) -> list[str]:
    return [str(delivery.message["Subject"]) for delivery in seen]


def test_each_mail_is_handed_over_once_and_changed_only_after_its_outcome_is_recorded():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in (1, 2, 3):
        mailbox.add(uid, f"m{uid}")
    assert pipeline.catch_up(mailbox) == 3
    assert subjects(seen) == ["m1", "m2", "m3"]
    assert mailbox.applied == [((1, 2, 3), "seen")]
    assert mailbox.states_when_applied == [GuardState.DONE] * 3
    assert pipeline.catch_up(mailbox) == 0  # nothing new: nothing handed out again
    assert mailbox.listed_after[-1] == 3, "the cursor is past the last mail"


def test_a_retry_of_older_mail_never_moves_the_cursor_back():
    calls = {"m1": 0}

    def flaky(delivery: Delivery) -> None:
        subject = str(delivery.message["Subject"])
        if subject == "m1":
            calls["m1"] += 1
            if calls["m1"] == 1:
                raise RuntimeError("not yet")

    pipeline, mailbox = make(flaky)
    for uid in (1, 2, 3):
        mailbox.add(uid, f"m{uid}")
    pipeline.catch_up(mailbox)  # m1 fails, m2 and m3 are done; the cursor is at 3
    pipeline.catch_up(mailbox)  # only m1 is retried (and done)
    assert calls["m1"] == 2
    pipeline.catch_up(mailbox)
    assert mailbox.listed_after == [0, 3, 3], "the retry of UID 1 left the cursor at 3"
    assert [positions for positions, _ in mailbox.applied] == [(2, 3), (1,)]


def test_mail_recorded_done_but_not_yet_changed_is_only_changed():
    """A crash between the outcome and the mailbox change: the change is finished, no handler."""
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    mailbox.add(1, "m1")
    claim = pipeline.guard.claim(mailbox.base.with_uid(1))
    claim.done()  # recorded, and then the process died before marking it seen
    assert pipeline.catch_up(mailbox) == 0
    assert seen == []
    assert mailbox.applied == [((1,), "seen")]


def test_the_same_content_under_a_new_position_is_not_handed_out_again():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append, repeat="skip")
    mailbox.add(1, "same")
    pipeline.catch_up(mailbox)
    mailbox.mails[2] = mailbox.mails.pop(1)  # the server gave it a new UID
    assert pipeline.catch_up(mailbox) == 0
    assert subjects(seen) == ["same"]
    assert mailbox.applied[-1] == ((2,), "seen"), "its post-action is still applied"


def test_the_same_bytes_back_after_their_change_blocks_by_default():
    """The help-desk rule (issue 20): handled, changed, and in the mailbox again."""
    from mailtether import RepeatedMessage

    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    mailbox.add(1, "same")
    pipeline.catch_up(mailbox)
    mailbox.mails[2] = mailbox.mails.pop(1)
    with pytest.raises(RepeatedMessage, match="in the mailbox again"):
        pipeline.catch_up(mailbox)
    assert subjects(seen) == ["same"]
    assert mailbox.applied[-1] == ((1,), "seen"), "the copy is left for a person"


def test_a_held_mail_is_put_aside_through_the_outbox_and_the_rest_goes_on():
    def handler(delivery: Delivery) -> None:
        if str(delivery.message["Subject"]) == "poison":
            raise ValueError("cannot parse")

    pipeline, mailbox = make(handler, max_failures=1, on_poison=PostAction("flag"))
    mailbox.add(1, "poison")
    mailbox.add(2, "fine")
    assert pipeline.catch_up(mailbox) == 1
    assert ((1,), "flag") in mailbox.applied
    assert ((2,), "seen") in mailbox.applied
    assert pipeline.store.get("outbox", mailbox.base.with_uid(1).id) is None, "outbox emptied"
    assert pipeline.guard.lookup(mailbox.base.with_uid(1)).state == GuardState.HELD


def test_recover_finishes_a_single_change_a_crash_interrupted():
    pipeline, mailbox = make(lambda delivery: None)
    mailbox.add(5, "m5")
    key = mailbox.base.with_uid(5)
    pipeline.store.put("outbox", key.id, "pending", {"action": "move", "folder": "Junk"})
    pipeline.recover(mailbox)
    assert mailbox.applied == [((5,), "move:Junk")]
    assert pipeline.store.get("outbox", key.id) is None


def test_a_source_without_a_cursor_is_listed_whole_every_time():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append, uses_cursor=False)
    mailbox.add(1, "m1")
    pipeline.catch_up(mailbox)
    mailbox.add(2, "m2")
    pipeline.catch_up(mailbox)
    assert mailbox.listed_after == [0, 0]
    assert subjects(seen) == ["m1", "m2"]
    assert pipeline.store.get("cursor", "test") is None


@pytest.mark.parametrize("value", ["seen", "move:Archive", "leave"])
def test_post_actions_read_back_as_written(value):
    assert str(PostAction.parse(value, "after", ("seen", "move", "leave"))) == value


@pytest.mark.parametrize("value", ["move", "move:", "flag", "seen:x", ""])
def test_bad_post_actions_are_refused_by_name(value):
    with pytest.raises(ValueError, match="after must be one of seen, move:<folder>, leave"):
        PostAction.parse(value, "after", ("seen", "move", "leave"))


class Fence:
    """A lease that is lost once *good* more checks have passed."""

    def __init__(self, token: int, good: int) -> None:
        self.token = token
        self.good = good

    def check(self) -> None:
        if self.good <= 0:
            raise LeaseLost("the lease was taken over")
        self.good -= 1


def test_a_lost_lease_hands_out_nothing_more_and_the_next_holder_finishes_the_changes():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in range(1, 6):
        mailbox.add(uid, f"m{uid}")
    # one check before the fetch, then one before each mail: lost before the third mail
    with pytest.raises(LeaseLost):
        pipeline.catch_up(mailbox, Fence(token=7, good=3))
    assert subjects(seen) == ["m1", "m2"], "nothing handed out after the loss"
    assert {d.token for d in seen} == {7}, "deliveries carry the holder's fencing token"
    assert mailbox.applied == [], "no mailbox change by a holder that lost the lease"
    assert pipeline.guard.counts()["done"] == 2, "what was handled is recorded"
    assert pipeline.guard.counts()["processing"] == 0, "unstarted claims were given back"

    # The next holder (same store, same mailbox) hands out the rest once and finishes the
    # changes the first one left, wherever they are in the folder.
    assert pipeline.catch_up(mailbox, Fence(token=8, good=100)) == 3
    assert subjects(seen) == ["m1", "m2", "m3", "m4", "m5"]
    assert sorted(p for positions, _ in mailbox.applied for p in positions) == [1, 2, 3, 4, 5]
    assert mailbox.states_when_applied == [GuardState.DONE] * 5
    assert pipeline.store.scan("outbox") == []


def test_mail_another_worker_claimed_is_looked_at_again_until_it_is_settled():
    """A stale holder's claims block a mail, never skip it: given back, it is handled."""
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in (1, 2, 3, 4):
        mailbox.add(uid, f"m{uid}")
    # A paused worker holds the claims of UIDs 2 and 3, made in one batch it never started.
    stale = pipeline.guard.claim_many([mailbox.base.with_uid(2), mailbox.base.with_uid(3)])
    assert pipeline.catch_up(mailbox) == 2  # m1 and m4; m2 and m3 are someone else's
    assert subjects(seen) == ["m1", "m4"]
    assert pipeline.catch_up(mailbox) == 0
    assert mailbox.listed_after[-1] == 4, "the cursor moves on past the claimed mail"
    for claim in stale:  # it wakes up, learns the lease is gone, and gives them back
        claim.give_back()
    assert pipeline.catch_up(mailbox) == 2
    assert subjects(seen) == ["m1", "m4", "m2", "m3"]
    assert pipeline.catch_up(mailbox) == 0
    assert sorted(p for positions, _ in mailbox.applied for p in positions) == [1, 2, 3, 4]
    assert "busy" not in pipeline.store.get("cursor", "test").data, "nothing left to watch"


def test_a_mail_left_out_of_an_answer_is_asked_for_alone_and_never_passed_unrecorded():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append, max_failures=2)
    for uid in (1, 2, 3):
        mailbox.add(uid, f"m{uid}")
    mailbox.omit = {2}
    assert pipeline.catch_up(mailbox) == 2
    assert subjects(seen) == ["m1", "m3"]
    assert mailbox.fetches == [(1, 2, 3), (2,)], "asked again alone"
    entry = pipeline.guard.lookup(mailbox.base.with_uid(2))
    assert entry is not None
    assert entry.state is GuardState.FAILED
    assert (
        entry.reason == "the server left UID 2 out of its answer, though it is still in the mailbox"
    )
    assert pipeline.guard.counts()["failed"] == 1

    pipeline.catch_up(mailbox)  # the second failed attempt: held, like any poison mail
    assert pipeline.guard.lookup(mailbox.base.with_uid(2)).state is GuardState.HELD

    pipeline.guard.release(mailbox.base.with_uid(2).id)  # a person lets it try again
    mailbox.omit = set()  # and the server gives it now
    assert pipeline.catch_up(mailbox) == 1
    assert subjects(seen) == ["m1", "m3", "m2"]


def test_a_mail_gone_from_the_mailbox_between_listing_and_fetch_is_passed_over():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in (1, 2, 3):
        mailbox.add(uid, f"m{uid}")
    listed = mailbox.list_new
    mailbox.list_new = lambda after: (listed(after), mailbox.mails.pop(2))[0]  # type: ignore[method-assign]
    assert pipeline.catch_up(mailbox) == 2
    assert pipeline.guard.lookup(mailbox.base.with_uid(2)) is None, "no attempt counted"
    assert pipeline.guard.counts() == {**pipeline.guard.counts(), "failed": 0, "done": 2}


def test_one_mail_the_server_refuses_is_found_by_halving_and_the_rest_is_handled():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in range(1, 9):
        mailbox.add(uid, f"m{uid}")
    mailbox.refuse = {6}
    assert pipeline.catch_up(mailbox) == 7
    assert sorted(subjects(seen)) == sorted(f"m{uid}" for uid in range(1, 9) if uid != 6)
    assert mailbox.fetches == [
        (1, 2, 3, 4, 5, 6, 7, 8),
        (1, 2, 3, 4),
        (5, 6, 7, 8),
        (5, 6),
        (5,),
        (6,),
        (7, 8),
    ]
    entry = pipeline.guard.lookup(mailbox.base.with_uid(6))
    assert entry is not None
    assert entry.state is GuardState.FAILED
    assert (
        entry.reason
        == "the server could not give UID 6: fetching new mail: the server said NO [SERVERBUG] boom"
    )
    assert mailbox.listed_after[-1] == 0
    pipeline.catch_up(mailbox)
    assert mailbox.listed_after[-1] == 8, "the cursor passed UID 6: its failure is recorded"


def test_the_same_content_twice_in_one_batch_is_handed_over_once():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    mailbox.add(1, "m1")
    mailbox.add(2, "m1")  # byte for byte the same mail, under a second UID
    mailbox.add(3, "m3")
    assert pipeline.catch_up(mailbox) == 2
    assert subjects(seen) == ["m1", "m3"]
    entry = pipeline.guard.lookup(mailbox.base.with_uid(2))
    assert entry is not None
    assert entry.state is GuardState.DONE, "recognised as a repeat of UID 1"
    assert sorted(p for positions, _ in mailbox.applied for p in positions) == [1, 2, 3]
    assert mailbox.states_when_applied == [GuardState.DONE] * 3


def test_mail_larger_than_the_limit_is_held_without_being_fetched():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append, on_poison=PostAction("flag"))
    pipeline.max_message_bytes = 10_000
    for uid in (1, 2, 3):
        mailbox.add(uid, f"m{uid}")
    mailbox.size_of[2] = 10_001
    assert pipeline.catch_up(mailbox) == 2
    assert subjects(seen) == ["m1", "m3"]
    assert all(2 not in fetched for fetched in mailbox.fetches), "never fetched"
    entry = pipeline.guard.lookup(mailbox.base.with_uid(2))
    assert entry is not None
    assert entry.state is GuardState.HELD, "held at once, not after max_failures"
    assert entry.reason == "larger than max_message_bytes (10001 bytes)"
    assert ((2,), "flag") in mailbox.applied, "put aside like any held mail"
    pipeline.catch_up(mailbox)
    assert mailbox.listed_after[-1] == 3


def test_every_batch_keeps_to_the_byte_budget_the_first_included(monkeypatch):
    monkeypatch.setattr(pipeline_module, "_FETCH_BYTES", 1000)
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in range(1, 8):
        mailbox.add(uid, f"m{uid}")
        mailbox.size_of[uid] = 400
    mailbox.size_of[4] = 5000  # larger than a batch, within the limit: fetched alone
    assert pipeline.catch_up(mailbox) == 7
    assert mailbox.fetches == [(1, 2), (3,), (4,), (5, 6), (7,)]


def test_the_listing_is_worked_through_in_windows(monkeypatch):
    monkeypatch.setattr(pipeline_module, "_WINDOW", 3)
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in range(1, 9):
        mailbox.add(uid, f"m{uid}")
    cursors: list[int] = []
    real = pipeline._save_cursor
    monkeypatch.setattr(
        pipeline,
        "_save_cursor",
        lambda port, last, busy: (cursors.append(last), real(port, last, busy)),
    )
    assert pipeline.catch_up(mailbox) == 8
    assert mailbox.sized == [(1, 2, 3), (4, 5, 6), (7, 8)], "sized a window at a time"
    assert cursors[-1] == 8
    assert {3, 6} <= set(cursors), "the cursor moves on after each window"


def test_the_next_window_is_asked_for_before_the_last_batch_of_a_window_is_handed_over(
    monkeypatch,
):
    """At a window's edge the server is not left idle: sizes and first fetch go out ahead."""
    monkeypatch.setattr(pipeline_module, "_WINDOW", 3)
    asked_when: dict[str, tuple[int, int]] = {}
    pipeline, mailbox = make(
        lambda delivery: asked_when.setdefault(
            str(delivery.message["Subject"]), (len(mailbox.sized), len(mailbox.fetches))
        )
    )
    for uid in range(1, 8):
        mailbox.add(uid, f"m{uid}")
    assert pipeline.catch_up(mailbox) == 7
    assert mailbox.sized == [(1, 2, 3), (4, 5, 6), (7,)]
    # m1..m3 are the first window's one batch (the handling speed is not yet known when it
    # is asked for); by the time m4's batch is handed over, the third window is asked for.
    assert asked_when["m4"] == (3, 3), "window 3 sized and its first batch asked before m4"
    assert mailbox.fetches == [(1, 2, 3), (4, 5, 6), (7,)]
    assert mailbox.applied == [((1, 2, 3), "seen"), ((4, 5, 6), "seen"), ((7,), "seen")]


def test_a_break_in_the_next_windows_answer_leaves_the_cursor_after_the_window_handled(
    monkeypatch,
):
    monkeypatch.setattr(pipeline_module, "_WINDOW", 3)
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append)
    for uid in range(1, 10):
        mailbox.add(uid, f"m{uid}")
    pipeline.catch_up(mailbox)  # the speed is known from here on: every batch asked ahead
    for uid in range(10, 16):
        mailbox.add(uid, f"m{uid}")
    mailbox.breaks = {13}  # the next window's first batch breaks the connection
    with pytest.raises(ConnectionLost):
        pipeline.catch_up(mailbox)
    assert subjects(seen)[9:] == ["m10", "m11", "m12"], "the window before was handled"
    assert pipeline.store.get("cursor", "test").data["last"] == 12
    assert [positions for positions, _ in mailbox.applied][-1] == (10, 11, 12)
    mailbox.breaks = set()
    assert pipeline.catch_up(mailbox) == 3
    assert subjects(seen)[12:] == ["m13", "m14", "m15"], "nothing lost, nothing twice"


def test_a_mail_whose_fetch_breaks_the_connection_is_found_and_held_not_looped_on():
    seen: list[Delivery] = []
    pipeline, mailbox = make(seen.append, max_failures=2, on_poison=PostAction("flag"))
    for uid in (1, 2, 3, 4):
        mailbox.add(uid, f"m{uid}")
    mailbox.breaks = {3}
    sessions = 0
    while True:  # each ConnectionLost is a reconnect; the run loop would start a new session
        sessions += 1
        assert sessions < 10, "a mail that breaks the connection must not stall the mailbox"
        try:
            pipeline.catch_up(mailbox)
            break
        except ConnectionLost:
            continue
    assert sorted(subjects(seen)) == ["m1", "m2", "m4"]
    entry = pipeline.guard.lookup(mailbox.base.with_uid(3))
    assert entry is not None
    assert entry.state is GuardState.HELD
    assert entry.reason.startswith("the connection broke while UID 3 was being fetched, again")
    assert mailbox.fetches[:3] == [(1, 2, 3, 4), (1,), (2,)], "one at a time after a break"
    assert sessions == 4  # the batch, then UID 3 alone twice (two attempts), then the rest
    assert ((3,), "flag") in mailbox.applied, "its poison action was waiting in the outbox"
