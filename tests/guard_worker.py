"""A process that claims messages through a DuplicateGuard; run by tests/test_guard_processes.py.

Modes:
  claim URL COUNT SEED OUT   claim keys 1..COUNT in a shuffled order; append each UID it
                             handled to OUT
  hang URL UID TTL           claim one key, print "claimed", then hang (to be killed)
"""

from __future__ import annotations

import random
import sys
import time

from mailtether import DuplicateGuard, MessageKey, store_from_url


def key(uid: int) -> MessageKey:
    return MessageKey.imap("support@example.com", "INBOX", 7, uid)


def claim(url: str, count: int, seed: int, out: str) -> None:
    store = store_from_url(url)
    guard = DuplicateGuard(store, repeat="skip")
    uids = list(range(1, count + 1))
    random.Random(seed).shuffle(uids)
    handled = []
    for uid in uids:
        with guard.claim(key(uid)) as claimed:
            if claimed.acquired:
                handled.append(f"{uid}\n")
    with open(out, "w") as handle:
        handle.writelines(handled)
    store.close()


def hang(url: str, uid: int, ttl: float) -> None:
    guard = DuplicateGuard(store_from_url(url), claim_ttl=ttl)
    claimed = guard.claim(key(uid))
    print("claimed" if claimed.acquired else claimed.status.value, flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "claim":
        claim(args[0], int(args[1]), int(args[2]), args[3])
    elif mode == "hang":
        hang(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
