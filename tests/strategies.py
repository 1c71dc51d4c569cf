"""Hypothesis strategies: reconnect strategies (and wrappers of them), and IMAP answers."""

from __future__ import annotations

from hypothesis import strategies as st

from mailtether import (
    DAY,
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    ReconnectStrategy,
    Tiered,
)

seconds = st.floats(min_value=0.001, max_value=2 * DAY, allow_nan=False, allow_infinity=False)
attempt_caps = st.none() | st.integers(min_value=0, max_value=50)


@st.composite
def fixed(draw: st.DrawFn) -> Fixed:
    return Fixed(draw(seconds), max_attempts=draw(attempt_caps))


@st.composite
def exponential(draw: st.DrawFn) -> Exponential:
    initial = draw(seconds)
    growth = draw(st.floats(min_value=0, max_value=10))
    max_delay = None
    if growth > 0 and draw(st.booleans()):
        max_delay = draw(st.floats(min_value=initial, max_value=max(initial, 3 * DAY)))
    return Exponential(initial, growth=growth, max_delay=max_delay, max_attempts=draw(attempt_caps))


@st.composite
def tiered(draw: st.DrawFn) -> Tiered:
    bounds = sorted(
        draw(st.sets(st.floats(min_value=1, max_value=60 * DAY), min_size=1, max_size=4))
    )
    tiers: list[tuple[float | None, float]] = [(bound, draw(seconds)) for bound in bounds]
    if draw(st.booleans()):
        tiers.append((None, draw(seconds)))
    return Tiered(*tiers)


plain = fixed() | exponential() | tiered()


@st.composite
def wrapped(draw: st.DrawFn, inner: st.SearchStrategy[ReconnectStrategy]) -> ReconnectStrategy:
    strategy = draw(inner)
    wrapper = draw(st.sampled_from(["immediate", "capped", "jitter", "chain"]))
    if wrapper == "immediate":
        return ImmediateFirst(strategy)
    if wrapper == "capped":
        return Capped(
            strategy,
            max_attempts=draw(st.none() | st.integers(min_value=0, max_value=40)),
            max_offline_for=draw(st.floats(min_value=0, max_value=30 * DAY)),
            max_delay=draw(st.none() | seconds),
        )
    if wrapper == "jitter":
        kind = draw(st.sampled_from(["none", "full", "equal", "decorrelated"]))
        first = strategy.delay(1, 0.0)
        if kind == "decorrelated" and not first:
            kind = "full"
        return Jittered(strategy, kind, seed=draw(st.integers(min_value=0, max_value=2**64 - 1)))
    other = draw(plain)
    return Chain((strategy, draw(st.integers(min_value=1, max_value=20))), (other, None))


any_strategy = plain | wrapped(plain) | wrapped(wrapped(plain))


# -- IMAP answers: the responses a FETCH answer may hold, usual or not -----------------------------

_FETCH_FLAGS = st.lists(st.sampled_from([b"\\Seen", b"\\Flagged", b"$Label1", b"Junk", b'"odd"']))


@st.composite
def fetch_response(draw: st.DrawFn) -> bytes:
    """One response a server may send while answering ``UID FETCH ... (BODY.PEEK[] FLAGS)``.

    Mostly the usual shape (UIDs 1-8, so some come twice; some literals longer than a read
    buffer), else another item order, a trailer with more items, an unsolicited flag change,
    news of new mail, a pipelined STORE's completion (tag ``ABCD2``), a garbled or unexpected
    line, or a BYE.
    """
    number, uid = draw(st.integers(1, 9)), draw(st.integers(1, 8))
    flags = b" ".join(draw(_FETCH_FLAGS))
    raw = draw(st.binary(max_size=40) | st.builds(lambda n: b"x" * n, st.integers(0, 700)))
    kind = draw(st.integers(0, 19))
    literal = b"{%d}\r\n%s" % (len(raw), raw)
    if kind < 10:
        return b"* %d FETCH (UID %d FLAGS (%s) BODY[] %s)\r\n" % (number, uid, flags, literal)
    return draw(
        st.sampled_from(
            [
                b"* %d FETCH (FLAGS (%s) UID %d BODY[] %s)\r\n" % (number, flags, uid, literal),
                b"* %d FETCH (UID %d FLAGS () BODY[] %s MODSEQ (4))\r\n" % (number, uid, literal),
                b"* %d FETCH (UID %d FLAGS (%s) BODY[] {%d}\r\n" % (number, uid, flags, len(raw)),
                b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (number, uid),
                b"* %d EXISTS\r\n* 1 RECENT\r\n" % number,
                b"* %d EXPUNGE\r\n" % number,
                b"ABCD2 OK Store completed\r\n",
                b"* %d FETCH (UID %d FLAGS (((\r\n" % (number, uid),
                b"ZZZZ9 OK not ours\r\n",
                b"* BYE shutting down\r\n",
            ]
        )
    )


fetch_answers = st.builds(
    lambda responses, end: b"".join(responses) + end,
    st.lists(fetch_response(), max_size=12),
    st.sampled_from(
        [b"ABCD1 OK done\r\n"] * 4
        + [b"ABCD1 NO [SERVERBUG] cannot\r\n", b"ABCD1 BAD what\r\n", b"", b"ABCD1 OK"]
    ),
)
"""The whole answer to a FETCH tagged ``ABCD1``: responses, then its end (or none)."""
