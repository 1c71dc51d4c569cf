"""What the store backends share: argument checks, write planning, JSON and URL helpers.

The :class:`~mailtether.Store` protocol and its value types are in
:mod:`mailtether.stores._protocol`; this module holds the code every backend runs the same way:

- argument checks (``check_*``), so each backend refuses the same arguments with the same errors;
- write planning for ``put_many`` (:func:`plan_writes`, :func:`written_records`) and
  :class:`PutFromPutMany`, which gives every store ``put`` as ``put_many`` of one write;
- :func:`existing_keys` and :func:`put_rows`, optional store methods with their fallbacks;
- the documents' JSON (:func:`encode_data`, :func:`decode_data`), :func:`lease_lost`,
  :func:`redact_url` and :func:`require` (optional dependencies).
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NamedTuple, cast

from mailtether._errors import ConfigError, LeaseLost
from mailtether._url_errors import redact
from mailtether.stores._protocol import KeyLookup, Lease, Record, Row, RowWrites, Store, Write

__all__ = [
    "MAX_KEY_LENGTH",
    "MIN_TTL",
    "PutFromPutMany",
    "WriteRun",
    "check_expect",
    "check_key",
    "check_keys",
    "check_lease",
    "check_limit",
    "check_namespace",
    "check_prefix",
    "check_put",
    "check_state",
    "check_time",
    "check_ttl",
    "check_writes",
    "decode_data",
    "encode_all",
    "encode_data",
    "existing_keys",
    "lease_lost",
    "plan_writes",
    "put_rows",
    "redact_url",
    "require",
    "written",
    "written_records",
]

MAX_KEY_LENGTH: Final = 1024
_NAMESPACE: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_STATE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MIN_TTL: Final = 0.001
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# _ENCODER's own C encoder, made once: encode() makes one a call (0.6 µs of a document's 1.1).
# Without its circular-reference markers, so it keeps no state between calls: a document
# that holds itself fails with a RecursionError instead, a ValueError like the others below.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_ENCODE_ONCE: Final = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
)


# -- argument checks: each backend refuses the same arguments with the same errors -----------------


_SEEN_NAMESPACES: set[str] = set()
_SEEN_STATES: set[str] = set()


def check_namespace(namespace: object) -> str:
    """Return *namespace* if it is a valid namespace, else raise ValueError/TypeError."""
    if namespace in _SEEN_NAMESPACES:  # a handful of names, checked millions of times
        return namespace
    return _check_name(
        namespace,
        "namespace",
        _NAMESPACE,
        "1-64 characters of a-z, 0-9, _ . : - starting with a letter or digit",
        _SEEN_NAMESPACES,
    )


def check_state(state: object) -> str:
    """Return *state* if it is a valid state tag (a-z, 0-9, _ -; up to 32 characters)."""
    if state in _SEEN_STATES:
        return state
    return _check_name(
        state,
        "state",
        _STATE,
        "1-32 characters of a-z, 0-9, _ - starting with a letter",
        _SEEN_STATES,
    )


def _check_name(
    value: object, what: str, pattern: re.Pattern[str], rule: str, seen: set[str]
) -> str:
    """Return *value* if it matches *pattern*, and remember it in *seen* (up to 1024 names)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not valid: use {rule}")
    if len(seen) < 1024:
        seen.add(value)
    return value


def check_key(key: object, what: str = "key") -> str:
    """Return *key* if it is non-empty text without NUL, at most 1024 characters."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise ValueError(
            f"{what} must be 1-{MAX_KEY_LENGTH} characters without NUL, got {key[:80]!r}"
        )
    return key


def check_keys(keys: Iterable[object]) -> list[str]:
    """Return *keys* as a list after checking each as :func:`check_key` does.

    The common case (all valid) is checked by C loops over the whole list, a few
    nanoseconds a key; a list with a bad key is checked key by key for check_key's error.
    """
    wanted: list[Any] = list(keys)
    try:
        joined = "".join(wanted)
    except TypeError:
        joined = "\x00"  # not all text: found below
    if "\x00" in joined or not all(wanted) or max(map(len, wanted), default=0) > MAX_KEY_LENGTH:
        for key in wanted:
            check_key(key)
    return wanted


def check_expect(expect: object) -> int | None:
    """Return *expect* if it is ``None`` or an int >= 0."""
    return _none_or_count(expect, "expect")


def check_limit(limit: object) -> int | None:
    """Return *limit* if it is ``None`` or an int >= 0."""
    return _none_or_count(limit, "limit")


def _none_or_count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be None or an int >= 0, got {value!r}")
    return value


def check_time(value: object, what: str) -> float:
    """Return *value* as float if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def check_ttl(ttl: object) -> float:
    """Return *ttl* as float seconds if it is finite and at least 1 ms."""
    if (type(ttl) is float or type(ttl) is int) and MIN_TTL <= ttl < math.inf:
        return float(ttl)  # the common case
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    ttl = float(ttl)
    if not math.isfinite(ttl) or ttl < MIN_TTL:
        raise ValueError(f"ttl must be finite and at least {MIN_TTL} s, got {ttl!r}")
    return ttl


def check_lease(lease: object) -> Lease:
    """Return *lease* if it is a :class:`Lease`."""
    if not isinstance(lease, Lease):
        raise TypeError(f"expected a Lease, not {type(lease).__name__}")
    return lease


def check_put(namespace: object, key: object, state: object, expect: object) -> None:
    """Check the arguments every backend's ``put`` takes."""
    if (  # the common case in one expression, for a put's few hundred nanoseconds
        namespace in _SEEN_NAMESPACES
        and state in _SEEN_STATES
        and type(key) is str
        and 0 < len(key) <= MAX_KEY_LENGTH
        and "\x00" not in key
        and (expect is None or (type(expect) is int and expect >= 0))
    ):
        return
    check_namespace(namespace)
    check_key(key)
    check_state(state)
    check_expect(expect)


def check_batch(batch: object, method: str) -> Iterable[Any]:
    """Return *batch* for ``put_many`` or ``put_rows``; refuse it if not an iterable of items.

    A single :class:`Write`, a text or a mapping iterates too, but not over writes or rows:
    each is refused, naming *method*.
    """
    if type(batch) is not list and (  # a list is the usual case, and an ABC check costs
        isinstance(batch, Write | str | bytes | Mapping) or not isinstance(batch, Iterable)
    ):
        items = "Write" if method == "put_many" else "tuples"
        raise TypeError(f"{method} takes an iterable of {items}, not {type(batch).__name__}")
    return batch


def check_writes(writes: object) -> list[Write]:
    """Return *writes* as a list after checking every one as ``put`` checks its arguments."""
    checked: list[Write] = []
    namespaces, states = _SEEN_NAMESPACES, _SEEN_STATES
    for write in check_batch(writes, "put_many"):
        if not isinstance(write, Write):
            raise TypeError(f"put_many takes Write objects, not {type(write).__name__}")
        key, expect = write.key, write.expect
        if not (  # the common case in one expression; anything else gets check_put's errors
            write.namespace in namespaces
            and write.state in states
            and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH
            and "\x00" not in key
            and (expect is None or (type(expect) is int and expect >= 0))
        ):
            check_put(write.namespace, key, write.state, expect)
        checked.append(write)
    return checked


def check_rows(rows: object) -> list[Row]:
    """Return *rows* (``put_rows``' tuples) as a list after checking each as ``put`` would."""
    checked: list[Row] = list(check_batch(rows, "put_rows"))
    for namespace, key, state, _, expect in checked:
        check_put(namespace, key, state, expect)
    return checked


def check_prefix(prefix: object, pattern: re.Pattern[str], what: str, rule: str) -> str:
    """Return *prefix* (of a remote store's keys or tables) if it matches *pattern*.

    Raises:
        ConfigError: it does not; the message says *what* it is and the *rule* it breaks.
    """
    if not isinstance(prefix, str) or not pattern.match(prefix):
        raise ConfigError(f"{what} {prefix!r} must be {rule}")
    return prefix


# -- writes: put from put_many, and put_many's runs of multi-row statements ------------------------


class PutFromPutMany(ABC):
    """A store's :meth:`~mailtether.Store.put`, as ``put_many`` of one write.

    Each backend writes records in one place, its ``put_many``; this base gives all of them
    the same ``put`` on top of it.
    """

    @abstractmethod
    def put_many(self, writes: Iterable[Write]) -> list[Record | None]:
        """Apply several writes, each exactly as :meth:`put` would, in order."""

    def put(
        self,
        namespace: str,
        key: str,
        state: str,
        data: Mapping[str, Any],
        *,
        expect: int | None = None,
    ) -> Record | None:
        """Write a record, compare-and-set on its version if *expect* is given."""
        return self.put_many([Write(namespace, key, state, data, expect)])[0]


class WriteRun(NamedTuple):
    """Writes that one multi-row statement applies (see :func:`plan_writes`)."""

    kind: str
    """``upsert`` (no *expect*), ``create`` (*expect* 0) or ``update`` (*expect* a version)."""
    writes: list[Write]
    texts: list[str]
    """Each write's document as JSON."""


def plan_writes(writes: Iterable[Write], most: int) -> list[WriteRun]:
    """Check *writes*, encode their documents and split them into runs, in order.

    A run holds writes of one kind (``upsert``: no *expect*; ``create``: *expect* 0;
    ``update``: *expect* a version), to one namespace, to distinct keys, at most *most* of
    them; so running the runs in order applies every write as ``put`` would, in order.
    Every write is checked, and every document encoded, before this returns: a bad one
    raises before anything is applied.
    """
    check_batch(writes, "put_many")
    runs: list[WriteRun] = []
    encoded: dict[int, str] = {}  # a document shared by several writes is encoded once
    keys: set[str] = set()
    batch: list[Write] = []
    texts: list[str] = []
    kind = namespace = ""
    namespaces, states = _SEEN_NAMESPACES, _SEEN_STATES
    for write in writes:  # check_writes' checks, in the same loop
        if type(write) is not Write and not isinstance(write, Write):
            raise TypeError(f"put_many takes Write objects, not {type(write).__name__}")
        key, expect, data = write.key, write.expect, write.data
        if not (
            write.namespace in namespaces
            and write.state in states
            and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH
            and "\x00" not in key
            and (expect is None or (type(expect) is int and expect >= 0))
        ):
            check_put(write.namespace, key, write.state, expect)
        text = encoded.get(id(data))
        if text is None:
            text = encoded[id(data)] = (
                "{}" if type(data) is dict and not data else encode_data(data)
            )
        this = "upsert" if expect is None else "create" if expect == 0 else "update"
        if this != kind or write.namespace != namespace or key in keys or len(batch) >= most:
            kind, namespace, keys, batch, texts = this, write.namespace, set(), [], []
            runs.append(WriteRun(kind, batch, texts))
        batch.append(write)
        texts.append(text)
        keys.add(key)
    return runs


def encode_all(writes: list[Write]) -> list[str]:
    """Each write's document as JSON; a document shared by several writes is encoded once."""
    encoded: dict[int, str] = {}
    texts = []
    for write in writes:
        data = write.data
        text = encoded.get(id(data))
        if text is None:
            text = encoded[id(data)] = (
                "{}" if type(data) is dict and not data else encode_data(data)
            )
        texts.append(text)
    return texts


def written_records(
    runs: list[WriteRun], answers: list[dict[str, tuple[Any, ...]]]
) -> list[Record | None]:
    """Return put_many's result: per write, in order, its new record or ``None``.

    Each run's answer maps the keys it wrote to their row ``(key, version, updated_at)``; a
    key missing from it is a write the compare-and-set refused.
    """
    records: list[Record | None] = []
    append = records.append
    for run, answer in zip(runs, answers, strict=True):
        get = answer.get
        for write in run.writes:
            row = get(write.key)
            append(
                None
                if row is None
                else Record(
                    write.namespace, write.key, write.state, dict(write.data), row[1], row[2]
                )
            )
    return records


def written(write: Write, version: int, updated_at: float) -> Record:
    """The record *write* made: its own copy of the document, at *version*."""
    return Record(write.namespace, write.key, write.state, dict(write.data), version, updated_at)


# -- optional store methods, with their fallbacks ------------------------------------------------


def existing_keys(store: Store, namespace: str, keys: Iterable[str]) -> set[str]:
    """The keys among *keys* that have a record: :meth:`KeyLookup.existing`.

    A store without that optional method is asked with ``get_many``, whose records give
    the same answer at a higher cost.
    """
    lookup = getattr(store, "existing", None)  # isinstance(store, KeyLookup) costs 7 µs
    if callable(lookup):
        return cast(KeyLookup, store).existing(namespace, keys)
    return set(store.get_many(namespace, keys))


def put_rows(store: Store, rows: list[Row]) -> list[int | None]:
    """Apply *rows* (``(namespace, key, state, data, expect)``): :meth:`RowWrites.put_rows`.

    A store without that optional method is given them as ``put_many``'s :class:`Write`
    objects, and its records' versions are returned.
    """
    fast = getattr(store, "put_rows", None)
    if callable(fast):
        return cast(RowWrites, store).put_rows(rows)
    return [
        None if record is None else record.version
        for record in store.put_many([Write(*row) for row in check_batch(rows, "put_rows")])
    ]


def put_started(store: Store, write: Write) -> Callable[[], Record | None]:
    """Start *write* and return the call that gives its result (as ``put`` would).

    See :func:`put_many_started`; a store that cannot is given it through ``put``.
    """
    if callable(getattr(store, "_put_started", None)):
        started = put_many_started(store, [write])
        return lambda: started()[0]
    record = store.put(write.namespace, write.key, write.state, write.data, expect=write.expect)
    return lambda: record


def put_many_started(store: Store, writes: list[Write]) -> Callable[[], list[Record | None]]:
    """Start *writes* and return the call that gives their result (as ``put_many`` would).

    A store that can send writes and wait for them later (RedisStore, PostgresStore: the
    server applies them meanwhile) does so; any other store writes them now, and the call
    only returns them. The call must be made, once.
    """
    start = getattr(store, "_put_started", None)
    if callable(start):
        return cast("Callable[[], list[Record | None]]", start(writes))
    records = store.put_many(writes)
    return lambda: records


# -- documents, leases, URLs and optional dependencies ---------------------------------------------


def encode_data(data: object) -> str:
    """Serialise a record's document to compact JSON; refuse what JSON cannot hold."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping, not {type(data).__name__}")
    try:
        if _ENCODE_ONCE is not None:
            return "".join(_ENCODE_ONCE(data, 0))
        return _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"data must be JSON-serialisable: {error}") from None


def decode_data(text: str | bytes) -> dict[str, Any]:
    """Parse a record's JSON document."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("stored record data is not a JSON object")
    return value


def lease_lost(lease: Lease) -> LeaseLost:
    """The error every backend raises when a renewal finds the lease no longer held."""
    return LeaseLost(
        f"lease {lease.name!r} (token {lease.token}) is no longer held by {lease.owner!r}: "
        "it expired or was taken over; stop the work it protected"
    )


def redact_url(url: str) -> str:
    """Return *url* with any password replaced by ``***``, for repr and messages.

    Both places a password can hide are covered: before the host (``user:pw@``, everything
    up to the last ``@``, so an unencoded ``/ ? # @ :`` in it is hidden too) and as a
    ``password=`` parameter (a URL query, or a libpq ``key=value`` connection string). See
    :func:`mailtether._url_errors.redact`.
    """
    return redact(url)


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or explain which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"this store needs {module!r}: install it with pip install 'mailtether[{extra}]'"
        ) from error
