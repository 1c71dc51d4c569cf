"""One side of a comparison benchmarks/fleet.py measures: ``_fleet_child.py ARGS.json``.

``{"who": "ours", ...}``: one :class:`~mailtether.FleetWorker` running every source (one
Dovecot user's INBOX each) on a SQLite store; ``{"who": "plain", ...}``: one imapclient
connection per folder, each in its own thread, in IDLE the way a naive user writes it.

It imports only what its side needs, so its RSS is that side's alone. It speaks JSON lines
on stdout: ``ready`` once every folder is watched (ours: every source ONLINE and caught up
once), ``handled`` for each mail a handler gets (with the latency from the mail's
``X-Sent`` header), and ``stopped``; it stops when its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

_print_lock = threading.Lock()


def say(event: str, **fields: Any) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


def status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def threads() -> dict[str, str]:
    """Native thread id -> Python thread name (``/proc`` shows every thread as ``python``)."""
    return {str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None}


def handled(subject: str, sent: str | None, source: str) -> None:
    latency = time.time() - float(sent) if sent else None
    say("handled", subject=subject, latency=latency, source=source)


def ours(args: dict[str, Any], started: float) -> None:
    from mailtether import (
        Fleet,
        FleetSource,
        FleetWorker,
        ImapSettings,
        SourceState,
        SQLiteStore,
    )

    say("imported", rss=status("VmRSS"))

    def handler(delivery: Any) -> None:
        message = delivery.message
        handled(str(message["Subject"]), message["X-Sent"], delivery.key.account)

    options = {"poll_interval": args["poll_interval"]}
    sources = [
        FleetSource(
            user,
            ImapSettings("127.0.0.1", user, password, port=args["port"], security="plain"),
            handler,
            options,
        )
        for user, password in args["users"]
    ]
    fleet = Fleet(sources, heartbeat=args["heartbeat"], lease_ttl=args["lease_ttl"])
    store = SQLiteStore(args["db"])
    worker = FleetWorker(fleet, store)
    worker.run_in_thread()
    names = [user for user, _ in args["users"]]
    deadline = time.monotonic() + args["timeout"]
    while True:
        runners = [worker.runner(name) for name in names]
        if all(r is not None and r.catch_ups >= 1 for r in runners):
            statuses = [worker.status.get(name) for name in names]
            if all(
                s is not None and s.state is SourceState.ONLINE and s.caught_up_at is not None
                for s in statuses
            ):
                break
        if time.monotonic() > deadline:
            online = sum(1 for r in runners if r is not None and r.catch_ups >= 1)
            say("failed", why=f"{online} of {len(names)} sources caught up after the timeout")
            return
        time.sleep(0.2)
    say("ready", took=time.perf_counter() - started, threads=threads())
    sys.stdin.read()  # until the parent closes it
    worker.stop(timeout=30)
    store.close()


def plain(args: dict[str, Any], started: float) -> None:
    from imapclient import IMAPClient

    say("imported", rss=status("VmRSS"))
    timeout = args["idle_check"]
    watching = threading.Semaphore(0)
    failed: list[str] = []

    def watch(user: str, password: str) -> None:
        try:
            client = IMAPClient("127.0.0.1", port=args["port"], ssl=False, timeout=30)
            client.login(user, password)
            client.select_folder("INBOX")
            client.idle()
        except Exception as error:
            failed.append(f"{user}: {error}")
            watching.release()
            return
        watching.release()
        while True:  # as the imapclient docs show it, with a new-mail branch
            responses = client.idle_check(timeout=timeout)
            if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                client.idle_done()
                uids = client.search(["UNSEEN"])
                for data in client.fetch(uids, ["BODY.PEEK[]"]).values():
                    head = data[b"BODY[]"].split(b"\r\n\r\n", 1)[0].decode()
                    fields = dict(
                        line.split(": ", 1) for line in head.split("\r\n") if ": " in line
                    )
                    handled(fields.get("Subject", ""), fields.get("X-Sent"), user)
                client.add_flags(uids, [b"\\Seen"])
                client.idle()

    for user, password in args["users"]:
        threading.Thread(target=watch, args=(user, password), daemon=True).start()
    for _ in args["users"]:
        watching.acquire()
    if failed:
        say("failed", why=f"{len(failed)} connections failed: {failed[:3]}")
        return
    say("ready", took=time.perf_counter() - started, threads=threads())
    sys.stdin.read()


def main() -> None:
    with open(sys.argv[1]) as given:
        args = json.load(given)
    os.unlink(sys.argv[1])
    started = time.perf_counter()
    if args["who"] == "ours":
        ours(args, started)
    else:
        plain(args, started)
    say("stopped")


if __name__ == "__main__":
    main()
