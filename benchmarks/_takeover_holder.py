"""The lease holder benchmarks/takeover.py kills: ``_takeover_holder.py URL NAME TTL``.

Takes ``ProcessLock(store, NAME, ttl=TTL)`` (renewed every TTL/3, as a working listener's
mailbox lease is), prints ``held TOKEN`` and then does nothing but renew until it is killed
with SIGKILL: no release, no clean-up, as a crash or ``kill -9`` would leave it.
"""

from __future__ import annotations

import sys
import threading

from mailtether import ProcessLock, store_from_url


def main() -> None:
    url, name, ttl = sys.argv[1:]
    store = store_from_url(url)
    with ProcessLock(store, name, ttl=float(ttl)) as lock:
        print(f"held {lock.token}", flush=True)
        threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main()
