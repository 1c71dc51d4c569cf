"""A process that contends for a lease; run by tests/test_lease_contention.py.

Modes:
  hammer URL NAME SECONDS OUT SENTINEL   take the lease as often as possible for SECONDS,
                                        recording each critical section to OUT
  hold URL NAME TTL                      take the lease, print its token, then obey stdin
                                        lines "renew" / "release" / "quit", printing results
"""

from __future__ import annotations

import os
import sys
import time

from mailtether import LeaseLost, default_owner, store_from_url


def hammer(url: str, name: str, seconds: float, out: str, sentinel: str) -> None:
    store = store_from_url(url)
    owner = default_owner()
    deadline = time.monotonic() + seconds
    lines = []
    while time.monotonic() < deadline:
        lease = store.acquire(name, owner, 5.0)
        if lease is None:
            time.sleep(0.0005)
            continue
        entered = time.monotonic()
        overlap = 0
        try:
            fd = os.open(sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlap = 1
            fd = -1
        time.sleep(0.0005)  # the "work" of the critical section
        if fd >= 0:
            os.close(fd)
            os.unlink(sentinel)
        left = time.monotonic()
        if not store.release(lease):
            overlap = 1  # we did not hold it all along
        lines.append(f"{lease.token} {entered!r} {left!r} {overlap}\n")
    store.close()
    with open(out, "w") as handle:
        handle.writelines(lines)


def hold(url: str, name: str, ttl: float) -> None:
    store = store_from_url(url)
    lease = store.acquire(name, default_owner(), ttl)
    print(lease.token if lease else "none", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "renew":
            try:
                lease = store.renew(lease)
                print("renewed", flush=True)
            except LeaseLost:
                print("lost", flush=True)
        elif command == "release":
            print("released" if store.release(lease) else "refused", flush=True)
        elif command == "quit":
            break
    store.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "hammer":
        hammer(args[0], args[1], float(args[2]), args[3], args[4])
    elif mode == "hold":
        hold(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
