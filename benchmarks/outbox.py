"""The outbox beside a plain smtplib loop, in one run, against a local SMTP server.

Run: ``.venv/bin/python benchmarks/outbox.py [STORE ...]`` (STORE: ``memory``, ``sqlite``,
``redis``, ``postgres``; all of them when none is named. Redis and PostgreSQL rows need
``redis-server`` / PostgreSQL installed; they start their own servers on free loopback
ports, or are left out with a note).

1. delivery: mails per second handed to a local aiosmtpd through ``Outbox.deliver_due`` on
   MemoryStore, SQLite, Redis and PostgreSQL (by default, and with ``prepared_statements``),
   beside a plain ``smtplib`` loop sending the
   same mails over one reused connection (target: >= 0.8x the plain loop). Rounds
   interleaved, medians.
2. ``Outbox.send()``: what recording one mail costs per store (microseconds).
3. the floor on PostgreSQL: the plain loop plus only the one write per mail that "nothing
   sent twice" needs (the mail's row updated after its ``250``: sent once the next ``MAIL
   FROM`` is, its answer read before that mail's content, as the outbox does), as raw SQL
   on a table of the store's shape, without prepared statements (as the store: it must
   work behind a transaction-pooling PgBouncer); then with the claims several senders need
   (50 mails a statement, each row holding the mail, each next 50 claimed on a second
   connection while the ones before are sent, as the outbox does); then with the per-mail
   update prepared. No code of ours can beat these rows: if one is under the target, the
   target cannot be met on this machine with that much written.

The outbox does more than the loop: each mail is claimed and its outcome recorded (two
store writes), per recipient, so a crash loses nothing; the loop loses its mails.
"""

from __future__ import annotations

import contextlib
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

from _servers import postgres_server, redis_server

from mailtether import MemoryStore, Outbox, SmtpRelay, SQLiteStore, Store, store_from_url
from mailtether._outbox_handoff import send_mail
from mailtether.stores._postgres_started import dollar_marks, read_rows, send_statement
from servers import free_port, port_open

MAILS = 500
ROUNDS = 9


def mail(round_: int, n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "helpdesk@example.com"
    message["To"] = "alice@example.com"
    message["Subject"] = f"reply {n}"
    message["Message-ID"] = f"<r{round_}-{n}@bench>"
    message.set_content(f"Your ticket {n} is closed.\n")
    return message


@contextlib.contextmanager
def smtp_server() -> Iterator[int]:
    """aiosmtpd in a process of its own (in this one, it would share the GIL with the sender)."""
    port = free_port()
    command = [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink"]
    server = subprocess.Popen([*command, "-l", f"127.0.0.1:{port}"])
    try:
        deadline = time.monotonic() + 20
        while not port_open(port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("aiosmtpd did not start")
            time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def plain_and_row(
    dsn: str, port: int, round_: int, *, prepared: bool, claims: bool = False
) -> tuple[float, float]:
    """The plain loop plus one row updated per mail, as raw SQL (see the module's text).

    *claims*: and the claims several senders need, 50 mails a statement, each row holding
    the mail (as the outbox's rows do until the mail is sent); the first 50 before anything
    is sent, each next 50 on a second connection while the 50 before them are sent (as the
    outbox does).
    """
    import base64

    import psycopg

    table = f"floor{round_}"
    document = '{"sender":"helpdesk@example.com","recipients":{"alice@example.com":"sent"}}'
    mails = [mail(round_, n).as_bytes() for n in range(MAILS)]
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0 if prepared else None)
        )
        db.execute(
            f'CREATE TABLE {table} (namespace text COLLATE "C", key text COLLATE "C", '
            'state text COLLATE "C", data text, version bigint, updated_at float8, '
            "PRIMARY KEY (namespace, key))"
        )
        db.execute(f"CREATE INDEX ON {table} (namespace, state, updated_at)")
        db.execute(
            f"INSERT INTO {table} SELECT 'outgoing', 'm' || n, 'sending', %s, 1, 0 "
            f"FROM generate_series(0, {MAILS - 1}) n",
            (document,),
        )
        update = (
            f"UPDATE {table} SET state = %s, data = %s, version = version + 1, "
            "updated_at = date_part('epoch', statement_timestamp()) "
            "WHERE namespace = %s AND key = %s AND version = %s RETURNING version, updated_at"
        )
        claim = dollar_marks(
            f"UPDATE {table} SET state = 'sending', data = d.data, version = version + 1, "
            "updated_at = date_part('epoch', statement_timestamp()) "
            "FROM unnest(string_to_array(%s, E'\\x1f'), string_to_array(%s, E'\\x1f')) "
            f"AS d(key, data) WHERE namespace = 'outgoing' AND {table}.key = d.key "
            f"AND version = 1 RETURNING {table}.key"
        )
        claimer = stack.enter_context(psycopg.connect(dsn, autocommit=True))

        def start_claim(first: int) -> None:
            keys = [f"m{k}" for k in range(first, min(first + 50, MAILS))]
            data = claimed[first : first + 50]
            send_statement(claimer, claim, ["\x1f".join(keys), "\x1f".join(data)])

        claimed = [
            document[:-1] + f',"raw":"{base64.b64encode(raw).decode()}","claimed_until":1}}'
            for raw in mails
        ]
        expect = 2 if claims else 1
        numbered = dollar_marks(update)
        if prepared:
            db.pgconn.prepare(b"record", numbered)
        started = time.perf_counter()
        if claims:
            start_claim(0)
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            held: str | None = None
            writing = False

            def start() -> None:  # the update sent once MAIL FROM is, as the outbox does
                nonlocal held, writing
                finish()
                if held is not None:
                    params = ["sent", document, "outgoing", held, expect]
                    if prepared:
                        db.pgconn.send_query_prepared(b"record", [str(p).encode() for p in params])
                        db.pgconn.flush()
                    else:
                        send_statement(db, numbered, params)
                    held, writing = None, True

            def finish() -> None:  # its answer read before the content goes
                nonlocal writing
                if writing:
                    writing = False
                    assert len(read_rows(db, psycopg)) == 1

            for n, raw in enumerate(mails):
                if claims and n % 50 == 0:
                    assert len(read_rows(claimer, psycopg)) == min(50, MAILS - n)
                    if n + 50 < MAILS:
                        start_claim(n + 50)
                send_mail(
                    smtp,
                    "helpdesk@example.com",
                    ["alice@example.com"],
                    raw,
                    meanwhile=start,
                    before_content=finish,
                )
                held = f"m{n}"
            start()
            finish()
        took = time.perf_counter() - started
        db.execute(f"DROP TABLE {table}")
    return MAILS / took, 0.0


def main() -> int:
    print(f"Python {sys.version.split()[0]}; {MAILS} mails a round, median of {ROUNDS} rounds")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(smtp_server())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_port = stack.enter_context(redis_server())
        postgres_dsn = stack.enter_context(postgres_server())
        relay = SmtpRelay("127.0.0.1", port=port, security="plain")
        counter = iter(range(1_000_000))
        stores: dict[str, Callable[[], Store]] = {
            "MemoryStore": MemoryStore,
            "SQLiteStore": lambda: SQLiteStore(tmp / f"outbox-{next(counter)}.db"),
        }
        if redis_port is not None:
            stores["RedisStore"] = lambda: store_from_url(
                f"redis://127.0.0.1:{redis_port}/0?prefix=o{next(counter)}"
            )
        if postgres_dsn is not None:
            stores["PostgresStore"] = lambda: store_from_url(
                f"{postgres_dsn}?table_prefix=o{next(counter)}"
            )
            stores["PostgresStore, prepared statements"] = lambda: store_from_url(
                f"{postgres_dsn}?table_prefix=o{next(counter)}&prepared_statements=true"
            )
        wanted = {name.lower() for name in sys.argv[1:]}
        if wanted:
            stores = {
                k: v
                for k, v in stores.items()
                if k.split(",")[0].lower().removesuffix("store") in wanted
            }
        rounds = iter(range(1_000_000))

        def plain() -> tuple[float, float]:
            # The mails flattened beforehand, as Outbox.send() does before its timing starts.
            mails = [mail(next(rounds), n).as_bytes() for n in range(MAILS)]
            started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                for raw in mails:
                    smtp.sendmail("helpdesk@example.com", ["alice@example.com"], raw)
            return MAILS / (time.perf_counter() - started), 0.0

        def ours(open_store: Callable[[], Store]) -> tuple[float, float]:
            store = open_store()
            outbox = Outbox(store, relay)
            mails = [mail(next(rounds), n) for n in range(MAILS)]
            started = time.perf_counter()
            for message in mails:
                outbox.send(message)
            queued = time.perf_counter()
            sent = outbox.deliver_due()
            took = time.perf_counter() - queued
            store.close()
            assert sent == MAILS, sent
            return MAILS / took, (queued - started) / MAILS * 1e6

        contenders: dict[str, Callable[[], tuple[float, float]]] = {"plain smtplib": plain}
        for name, open_store in stores.items():
            contenders[f"Outbox, {name}"] = lambda open_store=open_store: ours(open_store)  # type: ignore[misc]
        if postgres_dsn is not None and (not wanted or "postgres" in wanted):
            for prepared, claims in ((False, False), (False, True), (True, True)):
                name = "floor: plain + 1 SQL row" + (" + claims" if claims else "")
                name += ", prepared" if prepared else ""
                contenders[name] = lambda p=prepared, c=claims: plain_and_row(  # type: ignore[misc]
                    postgres_dsn, port, next(rounds), prepared=p, claims=c
                )
        for run in contenders.values():
            run()  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        costs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(ROUNDS):
            for name, run in contenders.items():
                rate, cost = run()
                rates[name].append(rate)
                costs[name].append(cost)
    plain_rate = statistics.median(rates["plain smtplib"])
    print(f"\n  {'contender':<44} {'mails/s':>8}  x plain   send() µs/mail")
    for name in contenders:
        rate = statistics.median(rates[name])
        cost = statistics.median(costs[name])
        peer = name == "plain smtplib" or name.startswith("floor")
        shown = "        -" if peer else f"{cost:9.0f}"
        print(f"  {name:<44} {rate:8,.0f}  {rate / plain_rate:6.2f}   {shown}")
    for missing, port_or_dsn in (("Redis", redis_port), ("PostgreSQL", postgres_dsn)):
        if port_or_dsn is None:
            print(f"  (no {missing} row: not installed)")
    print("  target: delivery >= 0.8x the plain loop on every store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
