"""DuplicateGuard on every store backend."""

from __future__ import annotations

import gc
import threading

import pytest

from backends import BACKENDS, Backend, make_backend
from mailtether import (
    ClaimLost,
    ClaimStatus,
    DuplicateGuard,
    MemoryStore,
    MessageKey,
    RepeatedMessage,
    content_digest,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    made = make_backend(request.param, request, tmp_path)
    yield made
    made.close()


def key(uid: int = 1, *, uidvalidity: int = 7, raw: bytes | None = None) -> MessageKey:
    return MessageKey.imap("support@example.com", "INBOX", uidvalidity, uid, raw=raw)


def mail(n: int, message_id: str | None = None) -> bytes:
    header = f"Message-ID: {message_id}\r\n" if message_id else ""
    return f"{header}Subject: mail {n}\r\n\r\nbody {n}\r\n".encode()


def test_a_new_message_is_processed_once(backend):
    guard = DuplicateGuard(backend.store, repeat="skip")
    handled = []
    with guard.claim(key()) as claim:
        assert claim.status is ClaimStatus.NEW
        assert claim.attempt == 1
        handled.append(1)
    with guard.claim(key()) as claim:
        assert claim.status is ClaimStatus.DONE
        assert not claim
    assert handled == [1]
    assert guard.counts()["done"] == 1


def test_a_failure_is_recorded_and_retried(backend):
    guard = DuplicateGuard(backend.store, max_failures=3)
    with pytest.raises(ValueError, match="broken"), guard.claim(key()) as claim:
        raise ValueError("broken template")
    entry = guard.lookup(key())
    assert entry.state == "failed"
    assert entry.attempts == 1
    assert entry.reason == "ValueError: broken template"
    with guard.claim(key()) as claim:
        assert claim.status is ClaimStatus.NEW
        assert claim.attempt == 2
    assert guard.lookup(key()).state == "done"


def test_poison_mail_is_held_after_n_failures_and_never_handed_out_again(backend):
    guard = DuplicateGuard(backend.store, max_failures=3)
    for _ in range(3):
        with pytest.raises(RuntimeError), guard.claim(key()):
            raise RuntimeError("cannot parse")
    for _ in range(5):
        assert guard.claim(key()).status is ClaimStatus.HELD
    [held] = guard.held()
    assert held.key == key()
    assert held.attempts == 3
    assert [h.event for h in held.history].count("failed") == 3
    assert held.history[-1].event == "held"
    assert guard.counts()["held"] == 1


def test_a_person_releases_or_drops_a_held_message(backend):
    guard = DuplicateGuard(backend.store, max_failures=1)
    with pytest.raises(RuntimeError), guard.claim(key(1)):
        raise RuntimeError("x")
    with pytest.raises(RuntimeError), guard.claim(key(2)):
        raise RuntimeError("y")
    assert guard.release(key(1), by="alice") is True
    with guard.claim(key(1)) as claim:
        assert claim.status is ClaimStatus.NEW
    assert guard.drop(key(2).id, by="bob") is True
    assert guard.claim(key(2)).status is ClaimStatus.DROPPED
    assert guard.held() == []
    assert guard.release(key(99)) is False
    assert guard.drop(key(1)) is False, "a done message cannot be dropped"
    assert guard.lookup(key(2)).history[-1].detail == "bob"


@pytest.mark.parametrize("policy", ["block", "skip", "quarantine"])
def test_repeat_policy_for_a_message_seen_again_after_done(backend, policy):
    guard = DuplicateGuard(backend.store, repeat=policy)
    with guard.claim(key()):
        pass
    if policy == "block":
        with pytest.raises(RepeatedMessage, match="already processed") as info:
            guard.claim(key())
        assert info.value.key == key()
    else:
        expected = ClaimStatus.DONE if policy == "skip" else ClaimStatus.QUARANTINE
        assert guard.claim(key()).status is expected


def test_only_one_concurrent_claimer_wins(backend):
    guards = [DuplicateGuard(backend.other() if i % 2 else backend.store) for i in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[ClaimStatus] = []

    def contend(guard: DuplicateGuard) -> None:
        barrier.wait()
        statuses.append(guard.claim(key()).status)

    threads = [threading.Thread(target=contend, args=(g,)) for g in guards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(ClaimStatus.NEW) == 1
    assert statuses.count(ClaimStatus.BUSY) == 7


def test_a_crashed_workers_claim_expires_and_counts_as_a_failure(backend):
    crashed = DuplicateGuard(backend.store, claim_ttl=0.3, max_failures=2, owner="crashed")
    assert crashed.claim(key()).status is ClaimStatus.NEW  # and the worker dies
    other = DuplicateGuard(backend.other(), claim_ttl=0.3, max_failures=2, owner="other")
    assert other.claim(key()).status is ClaimStatus.BUSY
    backend.pass_time(0.35)
    claim = other.claim(key())
    assert claim.status is ClaimStatus.NEW
    assert claim.attempt == 2
    assert guard_events(other) == ["expired", "claimed"]
    backend.pass_time(0.35)  # this worker dies too: two failed attempts, held
    assert other.claim(key()).status is ClaimStatus.HELD


def guard_events(guard: DuplicateGuard) -> list[str]:
    return [h.event for h in guard.lookup(key()).history]


def test_a_late_finisher_is_told_its_claim_was_lost(backend):
    slow = DuplicateGuard(backend.store, claim_ttl=0.3, owner="slow")
    claim = slow.claim(key())
    backend.pass_time(0.35)
    assert DuplicateGuard(backend.other(), claim_ttl=0.3).claim(key()).status is ClaimStatus.NEW
    with pytest.raises(ClaimLost, match="handled twice"):
        claim.done()


def test_a_long_handler_extends_its_claim(backend):
    guard = DuplicateGuard(backend.store, claim_ttl=0.4)
    with guard.claim(key()) as claim:
        backend.pass_time(0.25)
        claim.extend()
        backend.pass_time(0.25)
        assert DuplicateGuard(backend.other()).claim(key()).status is ClaimStatus.BUSY
    assert guard.lookup(key()).state == "done"


def test_interrupt_gives_the_message_back_without_a_failure(backend):
    guard = DuplicateGuard(backend.store, max_failures=1)
    with pytest.raises(KeyboardInterrupt), guard.claim(key()):
        raise KeyboardInterrupt
    assert guard.lookup(key()).attempts == 0
    assert guard.claim(key()).status is ClaimStatus.NEW


def test_uidvalidity_change_recognises_done_mail_by_content(backend):
    guard = DuplicateGuard(backend.store)
    before = [key(uid, uidvalidity=7, raw=mail(uid, f"<m{uid}@x>")) for uid in (1, 2, 3)]
    for k in before:
        with guard.claim(k):
            pass
    # The folder was recreated: new UIDVALIDITY, UIDs restart, one new mail arrived.
    after = [key(uid, uidvalidity=8, raw=mail(uid, f"<m{uid}@x>")) for uid in (1, 2, 3)]
    new_mail = key(4, uidvalidity=8, raw=mail(4, "<m4@x>"))
    assert guard.filter_new([*after, new_mail]) == [new_mail]
    assert guard.claim(after[0]).status is ClaimStatus.DUPLICATE
    assert guard.claim(after[0]).status is ClaimStatus.DUPLICATE, "stays a duplicate, no block"
    assert guard.claim(new_mail).status is ClaimStatus.NEW


def test_same_message_id_with_different_content_is_not_merged(backend):
    guard = DuplicateGuard(backend.store, repeat="skip")
    first = key(1, raw=mail(1, "<same@x>"))
    second = key(2, raw=mail(2, "<same@x>"))
    with guard.claim(first):
        pass
    assert guard.filter_new([second]) == [second]
    assert guard.claim(second).status is ClaimStatus.NEW


def test_mail_without_message_id_is_matched_only_by_content(backend):
    guard = DuplicateGuard(backend.store, repeat="skip")
    with guard.claim(key(1, raw=mail(1))):
        pass
    assert guard.claim(key(2, raw=mail(2))).status is ClaimStatus.NEW
    assert guard.claim(key(3, raw=mail(1))).status is ClaimStatus.DUPLICATE


def test_filter_new_batch(backend):
    guard = DuplicateGuard(backend.store)
    keys = [key(uid) for uid in range(1, 1501)]
    for k in keys[::3]:
        with guard.claim(k):
            pass
    fresh = guard.filter_new(keys)
    assert fresh == [k for i, k in enumerate(keys) if i % 3]


def test_triage_sorts_listed_mail_by_what_it_needs(backend):
    guard = DuplicateGuard(backend.store, claim_ttl=0.3, max_failures=2, owner="me")
    other = DuplicateGuard(backend.other(), claim_ttl=0.3, max_failures=2, owner="other")
    with guard.claim(key(1)):  # done
        pass
    with pytest.raises(ValueError, match="bad mail"), guard.claim(key(2)):  # failed: retry
        raise ValueError("bad mail")
    guard.claim(key(3)).hold("too large")  # held: waiting
    guard.claim(key(4)).hold("too large")
    assert guard.drop(key(4))  # dropped: waiting
    other.claim(key(5))  # claimed elsewhere and the worker died: expires, then retry
    backend.pass_time(0.35)
    guard.claim(key(6))  # claimed elsewhere right now: waiting, busy
    listed = [key(uid) for uid in (8, 6, 5, 4, 3, 2, 1, 7)]
    triage = guard.triage(iter(listed))
    assert triage.new == (key(8), key(7))
    assert triage.retry == (key(5), key(2))
    assert triage.done == (key(1),)
    assert triage.waiting == (key(6), key(4), key(3))
    assert triage.busy == (key(6),)
    assert guard.triage([key(9)]).new == (key(9),)
    assert guard.triage([]).new == ()


def test_triage_and_filter_new_read_no_record_of_mail_never_seen(backend, monkeypatch):
    guard = DuplicateGuard(backend.store, repeat="skip")
    for uid in range(1, 4):
        with guard.claim(key(uid)):
            pass
    guard.claim(key(4))
    asked: list[list[str]] = []
    real = backend.store.get_many

    def get_many(namespace, keys):  # type: ignore[no-untyped-def]
        asked.append(list(keys))
        return real(namespace, asked[-1])

    monkeypatch.setattr(backend.store, "get_many", get_many)
    first_sync = [key(uid) for uid in range(10, 1510)]
    assert guard.triage(first_sync).new == tuple(first_sync)
    assert asked == [], "a first sync reads no record"
    triage = guard.triage([key(uid) for uid in range(1, 7)])
    assert (triage.done, triage.busy, triage.new) == (
        (key(1), key(2), key(3)),
        (key(4),),
        (key(5), key(6)),
    )
    assert asked == [[key(uid).id for uid in range(1, 5)]], "the known ones, once"
    assert guard.filter_new([key(uid) for uid in range(2, 8)]) == [key(5), key(6), key(7)]
    assert len(asked) == 1, "filter_new reads no record"


def test_a_store_without_the_key_look_up_is_asked_once_per_check(backend):
    calls: list[str] = []

    class Plain:
        """Only what the Store protocol asks: no existing(); counts get_many."""

        def __getattr__(self, name: str) -> object:
            if name == "existing":
                raise AttributeError(name)
            return getattr(backend.store, name)

        def get_many(self, namespace, keys):  # type: ignore[no-untyped-def]
            calls.append(namespace)
            return backend.store.get_many(namespace, keys)

    guard = DuplicateGuard(Plain(), repeat="skip")  # type: ignore[arg-type]
    with guard.claim(key(1)):
        pass
    triage = guard.triage([key(1), key(2)])
    assert (triage.done, triage.new) == ((key(1),), (key(2),))
    assert guard.filter_new([key(1), key(2)]) == [key(2)]
    assert calls == ["guard", "guard"], "one look-up each"


def test_prune_forgets_only_old_done_records(backend):
    guard = DuplicateGuard(backend.store, max_failures=1)
    with guard.claim(key(1, raw=mail(1))):
        pass
    with pytest.raises(RuntimeError), guard.claim(key(2)):
        raise RuntimeError("poison")
    failing = DuplicateGuard(backend.store, max_failures=5)
    with pytest.raises(RuntimeError), failing.claim(key(3)):
        raise RuntimeError("flaky")
    guard.claim(key(4))  # in progress
    backend.pass_time(0.3)
    with guard.claim(key(5)):
        pass
    assert guard.prune(older_than=0.2) == 2  # key 1 and its content record
    assert guard.lookup(key(1)) is None
    assert guard.lookup(key(5)).state == "done"
    assert guard.lookup(key(2)).state == "held"
    assert guard.lookup(key(3)).state == "failed"
    assert guard.lookup(key(4)).state == "processing"


def test_separate_guards_by_name(backend):
    a = DuplicateGuard(backend.store, name="helpdesk", repeat="skip")
    b = DuplicateGuard(backend.store, name="archive", repeat="skip")
    with a.claim(key()):
        pass
    assert b.claim(key()).status is ClaimStatus.NEW


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_failures": 0}, "max_failures"),
        ({"claim_ttl": 0}, "claim_ttl"),
        ({"claim_ttl": float("inf")}, "claim_ttl"),
        ({"repeat": "ignore"}, "repeat must be one of"),
        ({"name": "Bad Name"}, "namespace"),
    ],
)
def test_bad_guard_arguments(backend, kwargs, words):
    with pytest.raises(ValueError, match=words):
        DuplicateGuard(backend.store, **kwargs)


def test_claim_refuses_a_non_key(backend):
    with pytest.raises(TypeError, match="MessageKey"):
        DuplicateGuard(backend.store).claim("uid 5")  # type: ignore[arg-type]


def test_content_digest_ignores_line_endings():
    assert content_digest(b"a\r\nb\r\n") == content_digest(b"a\nb\n")
    assert content_digest(b"a\r\nb") != content_digest(b"a\r\nc")


# -- batches -----------------------------------------------------------------------------------


def test_claim_many_decides_as_claim_does(backend):
    guard = DuplicateGuard(backend.store, repeat="skip", max_failures=2)
    done_before = key(1, raw=mail(1, "<m1@x>"))
    with guard.claim(done_before):
        pass
    failed_before = key(2, raw=mail(2))
    with pytest.raises(ValueError, match="boom"), guard.claim(failed_before):
        raise ValueError("boom")
    same_content = key(3, raw=mail(1, "<m1@x>"))  # the done mail under a new UID
    fresh = [key(uid, raw=mail(uid)) for uid in (4, 5, 6)]
    claims = guard.claim_many([done_before, failed_before, same_content, *fresh])
    assert [c.key for c in claims] == [done_before, failed_before, same_content, *fresh]
    assert [c.status for c in claims] == [
        ClaimStatus.DONE,
        ClaimStatus.NEW,
        ClaimStatus.DUPLICATE,
        ClaimStatus.NEW,
        ClaimStatus.NEW,
        ClaimStatus.NEW,
    ]
    assert [c.attempt for c in claims if c.acquired] == [2, 1, 1, 1]
    assert DuplicateGuard(backend.other()).claim(fresh[0]).status is ClaimStatus.BUSY
    held = guard.finish_many(
        [(claims[1], "ValueError: again"), (claims[3], None), (claims[4], None)]
    )
    assert held == [failed_before], "its second failure held it"
    assert guard.lookup(failed_before).state == "held"
    assert guard.lookup(fresh[0]).state == "done"
    assert guard.lookup(fresh[2]).state == "processing"
    claims[5].done()
    # The content of the done ones is known: the same mail under yet another UID is a duplicate.
    again = key(9, raw=mail(4))
    assert guard.claim(again).status is ClaimStatus.DUPLICATE
    assert guard.counts() == {"processing": 0, "done": 6, "failed": 0, "held": 1, "dropped": 0}


def test_claim_many_gets_each_key_for_only_one_of_many_workers(backend):
    keys = [key(uid) for uid in range(1, 41)]
    won: list[MessageKey] = []
    barrier = threading.Barrier(4)

    def work(index: int) -> None:
        store = backend.other() if index % 2 else backend.store
        guard = DuplicateGuard(store, owner=f"w{index}", repeat="skip")
        barrier.wait()
        claims = guard.claim_many(keys)
        mine = [c for c in claims if c.acquired]
        won.extend(c.key for c in mine)
        guard.finish_many((c, None) for c in mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(k.uid or 0 for k in won) == list(range(1, 41))
    assert DuplicateGuard(backend.store).counts()["done"] == 40


def test_claim_many_gives_back_its_claims_when_a_repeat_blocks(backend):
    guard = DuplicateGuard(backend.store, repeat="block")
    with guard.claim(key(2)):
        pass
    with pytest.raises(RepeatedMessage):
        guard.claim_many([key(1), key(2), key(3)])
    assert guard.lookup(key(1)) is None, "the new claims were undone"
    assert guard.lookup(key(3)) is None
    assert guard.claim(key(1)).attempt == 1


def test_claim_many_refuses_bad_input(backend):
    guard = DuplicateGuard(backend.store)
    with pytest.raises(TypeError, match="MessageKey"):
        guard.claim_many(["not a key"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="twice"):
        guard.claim_many([key(1), key(1)])
    assert guard.claim_many([]) == []


def test_finish_many_reports_a_lost_claim_and_records_the_rest(backend):
    slow = DuplicateGuard(backend.store, claim_ttl=0.3, owner="slow")
    claims = slow.claim_many([key(1), key(2)])
    backend.pass_time(0.35)
    assert DuplicateGuard(backend.other(), claim_ttl=0.3).claim(key(1)).acquired
    with pytest.raises(ClaimLost, match="handled twice"):
        slow.finish_many([(claims[0], None), (claims[1], None)])
    assert slow.lookup(key(2)).state == "done"
    assert slow.lookup(key(1)).state == "processing", "the other worker's claim stands"


def test_finish_many_refuses_a_claim_twice_or_not_yours(backend):
    guard = DuplicateGuard(backend.store, repeat="skip")
    claim = guard.claim(key(1))
    with pytest.raises(RuntimeError, match="twice"):
        guard.finish_many([(claim, None), (claim, None)])
    assert guard.lookup(key(1)).state == "processing", "nothing was recorded"
    claim.done()
    with pytest.raises(RuntimeError, match="already finished"):
        guard.finish_many([(claim, None)])
    skipped = guard.claim(key(1))
    with pytest.raises(RuntimeError, match="not yours"):
        guard.finish_many([(skipped, None)])


def test_a_memory_store_of_done_records_leaves_the_garbage_collector_alone():
    # Done records are kept as exact tuples of plain text and numbers, which CPython's
    # collector stops tracking: a large store adds nothing to each full collection. (A
    # StrEnum state or a tuple subclass kept every record tracked: ~10% of single claims.)
    store = MemoryStore()
    guard = DuplicateGuard(store, repeat="skip")
    keys = [key(uid) for uid in range(1, 2001)]
    gc.collect()
    before = len(gc.get_objects())
    for each in keys:
        with guard.claim(each):
            pass
    gc.collect()
    assert store.count(guard.namespace) == {"done": 2000}
    assert len(gc.get_objects()) - before < 200
