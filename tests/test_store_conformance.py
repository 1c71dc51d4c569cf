"""One conformance suite, run against every store backend."""

from __future__ import annotations

import threading

import pytest

from backends import BACKENDS, Backend, make_backend
from mailtether import Lease, LeaseLost, Record, Store, StoreError, Write
from mailtether.stores._protocol import KeyLookup
from mailtether.stores._shared import existing_keys, put_rows


@pytest.fixture(params=[*BACKENDS, "postgres-prepared"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    made = make_backend(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


# -- records -----------------------------------------------------------------------------------


def test_is_a_store(store):
    assert isinstance(store, Store)


def test_missing_record_is_none(store):
    assert store.get("guard", "nothing") is None
    assert store.get_many("guard", ["a", "b"]) == {}


def test_put_creates_then_versions_grow(store):
    first = store.put("guard", "k", "processing", {"n": 1})
    assert isinstance(first, Record)
    assert (first.namespace, first.key, first.state, first.data, first.version) == (
        "guard",
        "k",
        "processing",
        {"n": 1},
        1,
    )
    second = store.put("guard", "k", "done", {"n": 2})
    assert second.version == 2
    assert store.get("guard", "k") == second


def test_expect_zero_creates_only_once(store):
    assert store.put("guard", "k", "processing", {}, expect=0) is not None
    assert store.put("guard", "k", "processing", {"other": True}, expect=0) is None
    assert store.get("guard", "k").data == {}


def test_compare_and_set_on_version(store):
    record = store.put("guard", "k", "processing", {"worker": "a"})
    assert store.put("guard", "k", "done", {"worker": "b"}, expect=record.version + 1) is None
    assert store.get("guard", "k") == record, "a failed compare-and-set changes nothing"
    updated = store.put("guard", "k", "done", {"worker": "a"}, expect=record.version)
    assert updated.version == record.version + 1
    assert store.put("guard", "k", "failed", {}, expect=record.version) is None


def test_expect_on_a_missing_record_fails(store):
    assert store.put("guard", "ghost", "done", {}, expect=3) is None
    assert store.get("guard", "ghost") is None


def test_only_one_of_many_concurrent_writers_wins(backend):
    winners = []
    barrier = threading.Barrier(8)

    def contend(index: int) -> None:
        client = backend.other() if index % 2 else backend.store
        barrier.wait()
        if client.put("guard", "contended", "processing", {"by": index}, expect=0) is not None:
            winners.append(index)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert backend.store.get("guard", "contended").data == {"by": winners[0]}


def test_data_round_trips_json(store):
    data = {"subject": "Grüße ✉", "ids": [1, 2, 3], "nested": {"ok": True, "none": None}, "f": 1.5}
    store.put("guard", "uni ✉ key / with:colons", "done", data)
    assert store.get("guard", "uni ✉ key / with:colons").data == data


def test_data_is_copied_not_shared(store):
    data = {"list": [1]}
    store.put("guard", "k", "done", data)
    data["list"].append(2)
    assert store.get("guard", "k").data == {"list": [1]}


def test_a_reader_changing_what_it_was_given_changes_nothing_stored(store):
    for data in ({}, {"n": 1}, {"nested": {"n": 1}}):
        written = store.put("guard", "k", "done", data)
        written.data.clear()
        got = store.get("guard", "k")
        got.data.clear()
        assert store.get("guard", "k").data == data
        assert store.get_many("guard", ["k"])["k"].data == data


def test_namespaces_are_separate(store):
    store.put("guard", "k", "done", {"a": 1})
    store.put("status", "k", "online", {"b": 2})
    assert store.get("guard", "k").data == {"a": 1}
    assert store.count("guard") == {"done": 1}
    assert store.count("status") == {"online": 1}


def test_delete(store):
    record = store.put("guard", "k", "done", {})
    assert store.delete("guard", "k", expect=record.version + 1) is False
    assert store.get("guard", "k") is not None
    assert store.delete("guard", "k", expect=record.version) is True
    assert store.get("guard", "k") is None
    assert store.delete("guard", "k") is False


def test_get_many_returns_only_existing(store):
    for index in range(1200):
        store.put("guard", f"k{index}", "done", {"i": index})
    wanted = [f"k{index}" for index in range(0, 2400, 2)]
    found = store.get_many("guard", wanted)
    assert set(found) == {f"k{index}" for index in range(0, 1200, 2)}
    assert found["k10"].data == {"i": 10}


ODD_KEYS = [
    "a b",
    "line\nbreak",
    "tab\there",
    "pipe|key",
    "%z and %%",
    "ünïcödé ✉",
    "{brace}:colon",
    " ",
    "k" * 1024,
]


def test_existing_says_which_keys_have_a_record(store):
    store.put_many(
        Write("guard", f"k{index}", "done" if index % 3 else "held", {"i": index})
        for index in range(1200)
    )
    wanted = [f"k{index}" for index in range(0, 2400, 2)] + ["k4", "k4"]  # repeats are fine
    assert store.existing("guard", iter(wanted)) == {f"k{index}" for index in range(0, 1200, 2)}
    assert store.existing("guard", []) == set()
    assert store.existing("guard-content", wanted) == set(), "namespaces are separate"


def test_existing_follows_writes_and_deletes(store):
    record = store.put("guard", "k", "processing", {})
    assert store.existing("guard", ["k", "j"]) == {"k"}
    store.put("guard", "k", "done", {}, expect=record.version)
    assert store.existing("guard", ["k"]) == {"k"}
    store.delete("guard", "k")
    assert store.existing("guard", ["k"]) == set()


def test_odd_keys_and_documents_round_trip_in_batches(store):
    documents = {
        key: {"text": f'{key}\n\u2028 "quoted" {index}', "nul": "\x00 \\u0000"}
        for index, key in enumerate(ODD_KEYS)
    }
    results = store.put_many(Write("guard", key, "done", data) for key, data in documents.items())
    assert [r.key for r in results] == ODD_KEYS
    assert store.existing("guard", [*ODD_KEYS, "missing"]) == set(ODD_KEYS)
    found = store.get_many("guard", [*ODD_KEYS, "missing"])
    assert {key: record.data for key, record in found.items()} == documents
    assert [store.get("guard", key).data for key in ODD_KEYS] == list(documents.values())


@pytest.mark.parametrize("separator", ["", "unit\x1fseparator"], ids=["plain", "separator"])
def test_odd_keys_and_documents_survive_every_kind_of_batch_write(store, separator):
    # Quotes, backslashes, commas, braces, control characters, "NULL": whatever the rows
    # travel in (PostgresStore: texts joined by \x1f, or JSON when a key holds one).
    keys = [*ODD_KEYS, 'q"uote', "back\\slash\\", "a,b", "{x,y}", "NULL", "\x01\x1e\x7f", "é\u2028"]
    keys += [separator] if separator else []
    data = {k: {"k": k, "odd": '\x1f\x1e"\\ ,{}', "n": i} for i, k in enumerate(keys)}
    created = store.put_many(Write("guard", k, "processing", data[k], expect=0) for k in keys)
    assert [(r.key, r.version, r.data) for r in created] == [(k, 1, data[k]) for k in keys]
    assert store.put_many(Write("guard", k, "processing", {}, expect=0) for k in keys) == [
        None
    ] * len(keys)
    updated = store.put_many(Write("guard", k, "done", data[k], expect=1) for k in keys)
    assert [(r.key, r.state, r.version) for r in updated] == [(k, "done", 2) for k in keys]
    assert {k: r.data for k, r in store.get_many("guard", keys).items()} == data
    assert store.put_many(Write("guard", k, "x", {}, expect=1) for k in keys) == [None] * len(keys)
    upserted = store.put_many(Write("guard", k, "held", {"again": k}) for k in keys)
    assert [(r.key, r.version) for r in upserted] == [(k, 3) for k in keys]
    assert store.existing("guard", [*keys, "missing"]) == set(keys)
    found = store.get_many("guard", [*keys, "missing"])
    assert {k: (r.state, r.data, r.version) for k, r in found.items()} == {
        k: ("held", {"again": k}, 3) for k in keys
    }
    assert store.count("guard") == {"held": len(keys)}


def test_put_many_decides_each_write_across_batch_boundaries(store):
    taken = store.put_many(Write("guard", f"k{i}", "done", {}) for i in range(0, 1300, 2))
    writes = [Write("guard", f"k{i}", "processing", {"i": i}, expect=0) for i in range(1300)]
    writes += [Write("guard", "k1", "done", {}, expect=1), Write("guard", "k1", "x", {}, expect=1)]
    results = store.put_many(writes)
    assert [r is not None for r in results[:1300]] == [i % 2 == 1 for i in range(1300)]
    assert [r is not None for r in results[1300:]] == [True, False]
    assert store.count("guard") == {"done": 651, "processing": 649}
    assert len(taken) == 650


def test_put_rows_answers_each_write_with_its_version_as_put_many_would(store):
    # SQLiteStore's own put_rows, the others' put_many through the fallback. Creates and
    # updates refused in runs of many (SQLite: written unanswered, then again answered).
    store.put_many(Write("guard", f"k{i}", "done", {}) for i in range(0, 40, 4))
    rows = [("guard", f"k{i}", "processing", {"i": i}, 0) for i in range(40)]
    rows += [("guard", f"k{i}", "done", {}, 1) for i in range(0, 40, 2)]
    rows += [("guard", "k1", "x", {}, 5), ("guard", "k3", "x", {}, 0)]
    rows += [("guard", "k100", "held", {"n": 1}, None), ("guard", "k0", "held", {}, None)]
    expected = [None if i % 4 == 0 else 1 for i in range(40)] + [2] * 20 + [None, None] + [1, 3]
    assert put_rows(store, rows) == expected
    found = store.get_many("guard", [f"k{i}" for i in range(40)] + ["k100"])
    assert {k: (r.state, r.version) for k, r in found.items()} == {
        **{f"k{i}": ("processing", 1) for i in range(1, 40, 2)},
        **{f"k{i}": ("done", 2) for i in range(2, 40, 4)},
        **{f"k{i}": ("done", 2) for i in range(4, 40, 4)},
        "k0": ("held", 3),
        "k100": ("held", 1),
    }
    assert found["k2"].data == {}
    assert found["k5"].data == {"i": 5}
    assert put_rows(store, []) == []


def test_put_rows_checks_every_row_before_applying_any(store):
    rows = [("guard", f"k{i}", "done", {}, 0) for i in range(20)]
    with pytest.raises(ValueError, match="state"):
        put_rows(store, [*rows, ("guard", "bad", "Not A State", {}, 0)])
    with pytest.raises(ValueError, match="JSON"):
        put_rows(store, [*rows, ("guard", "bad", "done", {"x": object()}, 0)])
    assert store.count("guard") == {}


@pytest.mark.parametrize(
    ("method", "batch", "said"),
    [
        (
            "put_many",
            Write("guard", "k", "done", {}),
            "put_many takes an iterable of Write, not Write",
        ),
        ("put_many", "guard", "put_many takes an iterable of Write, not str"),
        ("put_many", {"guard": "k"}, "put_many takes an iterable of Write, not dict"),
        ("put_many", 5, "put_many takes an iterable of Write, not int"),
        ("put_rows", "guard", "put_rows takes an iterable of tuples, not str"),
        ("put_rows", {"guard": "k"}, "put_rows takes an iterable of tuples, not dict"),
        ("put_rows", 5, "put_rows takes an iterable of tuples, not int"),
    ],
)
def test_a_batch_that_is_not_an_iterable_of_items_is_refused_naming_it(store, method, batch, said):
    with pytest.raises(TypeError, match=said):  # put_rows: the store's own, or the fallback
        store.put_many(batch) if method == "put_many" else put_rows(store, batch)
    assert store.count("guard") == {}


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (["ok", ""], ValueError),
        (["ok", "nul\x00"], ValueError),
        (["ok", 5], TypeError),
        (["ok", "x" * 1025], ValueError),
    ],
)
def test_existing_and_get_many_refuse_bad_keys(store, keys, error):
    with pytest.raises(error):
        store.existing("guard", keys)
    with pytest.raises(error):
        store.get_many("guard", keys)
    with pytest.raises(ValueError, match="namespace 'Guard' is not valid"):
        store.existing("Guard", ["ok"])


def test_existing_keys_falls_back_to_get_many_for_a_store_without_existing(store):
    class Plain:
        """Only what the Store protocol asks: no existing."""

        def __getattr__(self, name: str) -> object:
            if name == "existing":
                raise AttributeError(name)
            return getattr(store, name)

    store.put("guard", "a", "done", {})
    store.put("guard", "b", "held", {})
    plain = Plain()
    assert not isinstance(plain, KeyLookup)
    assert isinstance(store, KeyLookup), "every built-in store has the optional look-up"
    assert existing_keys(plain, "guard", ["a", "b", "c"]) == {"a", "b"}  # type: ignore[arg-type]
    assert existing_keys(store, "guard", ["a", "b", "c"]) == {"a", "b"}


def test_put_many_applies_each_write_as_put_would(store):
    existing = store.put("guard", "old", "processing", {"n": 0})
    store.put("guard", "taken", "done", {})
    results = store.put_many(
        [
            Write("guard", "new", "processing", {"n": 1}, expect=0),
            Write("guard", "taken", "processing", {"n": 2}, expect=0),  # exists: refused
            Write("guard", "old", "done", {"n": 3}, expect=existing.version),
            Write("guard", "ghost", "done", {}, expect=7),  # missing: refused
            Write("guard-content", "c", "done", {"id": "new"}),
            Write("guard", "new", "done", {"n": 4}, expect=1),  # sees the first write
        ]
    )
    assert [None if r is None else (r.key, r.state, r.version) for r in results] == [
        ("new", "processing", 1),
        None,
        ("old", "done", existing.version + 1),
        None,
        ("c", "done", 1),
        ("new", "done", 2),
    ]
    assert store.get("guard", "new") == results[5]
    assert store.get("guard", "taken").state == "done"
    assert store.get("guard", "ghost") is None
    assert store.get("guard-content", "c").data == {"id": "new"}
    assert results[0].updated_at == pytest.approx(store.now(), abs=5)


def test_put_many_writes_to_one_key_apply_in_order(store):
    results = store.put_many(
        [
            Write("guard", "k", "processing", {"n": 1}),
            Write("guard", "k", "done", {"n": 2}),
            Write("guard", "j", "processing", {}, expect=0),
            Write("guard", "j", "done", {}, expect=0),  # j exists by now
            Write("guard", "k", "failed", {"n": 3}, expect=2),
            Write("guard", "k", "held", {"n": 4}, expect=2),  # k is at 3 by now
        ]
    )
    assert [None if r is None else r.version for r in results] == [1, 2, 1, None, 3, None]
    assert store.get("guard", "k").state == "failed"
    assert store.get("guard", "j").state == "processing"


def test_put_many_moves_keys_through_states_in_one_batch(store):
    # The indexes behind scan and count follow each key to its last state, also when a key
    # passes through states within one batch, and across namespaces taking turns.
    store.put("guard", "was-held", "held", {})
    results = store.put_many(
        [
            Write("guard", "k", "processing", {}, expect=0),
            Write("guard-content", "k", "processing", {}, expect=0),
            Write("guard", "k", "failed", {}, expect=1),
            Write("guard", "j", "failed", {}),
            Write("guard-content", "k", "done", {}, expect=1),
            Write("guard", "k", "processing", {}, expect=2),
            Write("guard", "was-held", "failed", {}, expect=1),
            Write("guard", "was-held", "done", {}, expect=2),
            Write("guard", "k", "done", {}, expect=9),  # refused: k stays processing
        ]
    )
    assert [None if r is None else r.version for r in results] == [1, 1, 2, 1, 2, 3, 2, 3, None]
    assert store.count("guard") == {"processing": 1, "failed": 1, "done": 1}
    assert store.count("guard-content") == {"done": 1}
    assert [r.key for r in store.scan("guard", state="processing")] == ["k"]
    assert [r.key for r in store.scan("guard", state="failed")] == ["j"]
    assert [r.key for r in store.scan("guard", state="done")] == ["was-held"]
    assert store.scan("guard", state="held") == []
    assert store.scan("guard-content", state="processing") == []
    assert sorted(r.key for r in store.scan("guard")) == ["j", "k", "was-held"]
    for record in store.scan("guard"):
        assert record == store.get("guard", record.key)
    # A state left empty in the batch is entered again later: it counts again.
    store.put("guard", "j", "held", {})
    assert store.count("guard") == {"processing": 1, "done": 1, "held": 1}
    assert store.prune("guard", state="held", updated_before=store.now() + 1) == 1
    assert store.count("guard") == {"processing": 1, "done": 1}


def test_put_many_of_nothing_and_of_many(store):
    assert store.put_many([]) == []
    results = store.put_many(Write("guard", f"k{i}", "done", {"i": i}) for i in range(1200))
    assert [r.version for r in results] == [1] * 1200
    assert store.count("guard") == {"done": 1200}


@pytest.mark.parametrize(
    ("writes", "error"),
    [
        (Write("guard", "k", "done", {}), TypeError),
        ([("guard", "k", "done", {})], TypeError),
        ([Write("guard", "k", "done", {}), Write("guard", "k", "Bad!", {})], ValueError),
        (
            [Write("guard", "k", "done", {}), Write("guard", "j", "done", {"x": object()})],
            ValueError,
        ),
        ([Write("guard", "k", "done", {}, expect=-1)], ValueError),
    ],
)
def test_put_many_checks_every_write_before_applying_any(store, writes, error):
    with pytest.raises(error):
        store.put_many(writes)
    assert store.count("guard") == {}


def test_only_one_of_many_concurrent_batches_wins_each_key(backend):
    won: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)
    keys = [f"k{i}" for i in range(50)]

    def contend(index: int) -> None:
        client = backend.other() if index % 2 else backend.store
        barrier.wait()
        results = client.put_many(
            Write("guard", k, "processing", {"by": index}, expect=0) for k in keys
        )
        for key, result in zip(keys, results, strict=True):
            if result is not None:
                won.setdefault(key, []).append(index)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == sorted(keys)
    assert all(len(winners) == 1 for winners in won.values())
    for key, winners in won.items():
        assert backend.store.get("guard", key).data == {"by": winners[0]}


def test_scan_count_and_prune(backend):
    store = backend.store
    store.put("guard", "old-done", "done", {})
    store.put("guard", "old-held", "held", {})
    backend.pass_time(0.05)
    cutoff = store.now()
    backend.pass_time(0.05)
    store.put("guard", "new-done", "done", {})
    store.put("guard", "new-processing", "processing", {})
    assert store.count("guard") == {"done": 2, "held": 1, "processing": 1}
    assert [r.key for r in store.scan("guard", state="done")] == ["old-done", "new-done"]
    assert [r.key for r in store.scan("guard", updated_before=cutoff)] == ["old-done", "old-held"]
    assert len(store.scan("guard", limit=3)) == 3
    assert store.prune("guard", state="done", updated_before=cutoff) == 1
    assert store.get("guard", "old-done") is None
    assert store.get("guard", "old-held") is not None, "prune touches only the named state"
    assert store.count("guard") == {"done": 1, "held": 1, "processing": 1}


def test_updated_at_is_on_the_store_clock(backend):
    before = backend.store.now()
    record = backend.store.put("guard", "k", "done", {})
    after = backend.store.now()
    assert before - 1 <= record.updated_at <= after + 1


def _holding_itself() -> dict[str, object]:
    document: dict[str, object] = {}
    document["x"] = [document]
    return document


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.get("Guard", "k"), ValueError),
        (lambda s: s.get("", "k"), ValueError),
        (lambda s: s.get("guard", ""), ValueError),
        (lambda s: s.get("guard", "x" * 1025), ValueError),
        (lambda s: s.get("guard", "nul\x00"), ValueError),
        (lambda s: s.get("guard", 5), TypeError),
        (lambda s: s.put("guard", "k", "Done!", {}), ValueError),
        (lambda s: s.put("guard", "k", "done", {"x": object()}), ValueError),
        (lambda s: s.put("guard", "k", "done", {"x": float("nan")}), ValueError),
        (lambda s: s.put("guard", "k", "done", _holding_itself()), ValueError),
        (lambda s: s.put("guard", "k", "done", ["not", "a", "mapping"]), TypeError),
        (lambda s: s.put("guard", "k", "done", {}, expect=-1), ValueError),
        (lambda s: s.scan("guard", limit=-1), ValueError),
        (lambda s: s.prune("guard", state="done", updated_before=float("inf")), ValueError),
    ],
)
def test_bad_arguments_raise_clear_errors(store, call, error):
    with pytest.raises(error):
        call(store)
    assert store.count("guard") == {}


# -- leases ------------------------------------------------------------------------------------


def test_acquire_a_free_lease(store):
    lease = store.acquire("mailbox:support", "worker-a", 30)
    assert isinstance(lease, Lease)
    assert (lease.name, lease.owner, lease.ttl) == ("mailbox:support", "worker-a", 30.0)
    assert lease.token >= 1
    assert lease.expires_at == pytest.approx(store.now() + 30, abs=2)
    assert store.holder("mailbox:support") == lease


def test_a_held_lease_is_not_given_to_another_owner(backend):
    lease = backend.store.acquire("m", "worker-a", 30)
    assert backend.other().acquire("m", "worker-b", 30) is None
    assert backend.store.acquire("m", "worker-a", 30) is None, "no re-entry, even for the owner"
    assert backend.store.holder("m") == lease


def test_tokens_strictly_increase_across_holders(backend):
    tokens = []
    for round_ in range(5):
        lease = backend.store.acquire("m", f"worker-{round_}", 0.2)
        tokens.append(lease.token)
        if round_ % 2:
            assert backend.store.release(lease)
        else:
            backend.expire(lease)
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 5


def test_tokens_survive_a_new_client(backend):
    first = backend.store.acquire("m", "a", 30)
    backend.store.release(first)
    second = backend.other().acquire("m", "b", 30)
    assert second.token > first.token


def test_expired_lease_is_taken_over(backend):
    crashed = backend.store.acquire("m", "crashed", 0.5)
    backend.expire(crashed)
    assert backend.store.holder("m") is None
    taker = backend.other().acquire("m", "taker", 30)
    assert taker is not None
    assert taker.token > crashed.token


def test_renew_extends_the_lease(backend):
    lease = backend.store.acquire("m", "a", 0.4)
    backend.pass_time(0.2)
    renewed = backend.store.renew(lease)
    assert renewed.token == lease.token
    assert renewed.expires_at > lease.expires_at
    backend.pass_time(0.3)
    assert backend.store.holder("m") == renewed
    longer = backend.store.renew(renewed, ttl=60)
    assert longer.ttl == 60.0


def test_renew_after_expiry_is_refused(backend):
    lease = backend.store.acquire("m", "a", 0.5)
    backend.expire(lease)
    with pytest.raises(LeaseLost, match="no longer held"):
        backend.store.renew(lease)
    assert backend.store.holder("m") is None


def test_non_holder_cannot_renew_or_release(backend):
    lease = backend.store.acquire("m", "a", 30)
    impostor = Lease("m", "b", lease.token, lease.expires_at, lease.ttl)
    stale = Lease("m", "a", lease.token - 1, lease.expires_at, lease.ttl)
    for fake in (impostor, stale):
        with pytest.raises(LeaseLost):
            backend.other().renew(fake)
        assert backend.other().release(fake) is False
    assert backend.store.holder("m") == lease


def test_old_holder_cannot_touch_the_new_holders_lease(backend):
    old = backend.store.acquire("m", "a", 0.5)
    backend.expire(old)
    new = backend.other().acquire("m", "b", 30)
    with pytest.raises(LeaseLost):
        backend.store.renew(old)
    assert backend.store.release(old) is False
    assert backend.store.holder("m") == new


def test_release_frees_the_lease_once(store):
    lease = store.acquire("m", "a", 30)
    assert store.release(lease) is True
    assert store.release(lease) is False
    assert store.holder("m") is None
    assert store.acquire("m", "b", 30).token == lease.token + 1


def test_leases_are_independent(store):
    a = store.acquire("mailbox:a", "w", 30)
    b = store.acquire("mailbox:b", "w", 30)
    assert a is not None
    assert b is not None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.acquire("", "w", 5), ValueError),
        (lambda s: s.acquire("m", "", 5), ValueError),
        (lambda s: s.acquire("m", "w", 0), ValueError),
        (lambda s: s.acquire("m", "w", -1), ValueError),
        (lambda s: s.acquire("m", "w", float("nan")), ValueError),
        (lambda s: s.acquire("m", "w", float("inf")), ValueError),
        (lambda s: s.acquire("m", "w", "5"), TypeError),
        (lambda s: s.renew("m"), TypeError),
        (lambda s: s.release(None), TypeError),
    ],
)
def test_bad_lease_arguments_raise_clear_errors(store, call, error):
    with pytest.raises(error):
        call(store)
    assert store.holder("m") is None


def test_closed_store_refuses_work(backend):
    backend.store.close()
    with pytest.raises(StoreError, match="closed"):
        backend.store.get("guard", "k")


# -- what the backends share ---------------------------------------------------------------------


class _Connection:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_pool_reuses_a_connection_and_closes_it_with_the_pool():
    from mailtether.stores._pool import Pool

    made: list[_Connection] = []
    pool = Pool(lambda: made.append(_Connection()) or made[-1], size=1)
    first = pool.take()
    pool.put_back(first)
    assert pool.take() is first
    second = pool.take()
    pool.put_back(first)
    pool.put_back(second)  # the pool holds one: the other is closed
    assert (first.closed, second.closed) == (False, True)
    pool.close()
    assert first.closed
    third = pool.take()
    pool.put_back(third)  # put back after close: closed, not kept
    assert third.closed
    assert made == [first, second, third]


def test_the_pool_drops_an_idle_connection_that_is_not_usable():
    from mailtether.stores._pool import Pool

    dead, fresh = _Connection(alive=False), _Connection()
    pool = Pool(lambda: fresh, usable=lambda connection: connection.alive)
    pool.put_back(dead)
    assert pool.take() is fresh
    assert dead.closed
