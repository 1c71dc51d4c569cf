"""An outbox sender process, killed mid-run by tests/test_outbox.py.

Usage: outbox_worker.py STORE_URL PORT

Delivers the outbox in the store at STORE_URL (``sqlite:///...``, ``postgresql://...``)
through the SMTP server on 127.0.0.1:PORT until it is killed (claims last 60 s).
"""

from __future__ import annotations

import sys

from mailtether import Outbox, SmtpRelay, store_from_url


def main() -> None:
    url, port = sys.argv[1:]
    relay = SmtpRelay("127.0.0.1", port=int(port), security="plain", timeout=10)
    Outbox(store_from_url(url), relay, claim_ttl=60, poll_interval=0.1).run()


if __name__ == "__main__":
    main()
