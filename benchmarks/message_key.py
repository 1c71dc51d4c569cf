"""``message_id_of``: its fast path beside the stdlib header parser it replaces.

Run: ``.venv/bin/python benchmarks/message_key.py``

Microseconds per call, best of 5 rounds, for the stdlib ``BytesHeaderParser`` (what
``message_id_of`` ran before; still its fallback for unusual header blocks) and for
``message_id_of`` now, on a typical 15-header message (Received, DKIM-Signature, 8-bit
Subject, folded lines) in CRLF and in LF, the same without a Message-ID, with a 1 MB body,
and on the three-header messages of ``benchmarks/listener.py``. Both give the same answer on
each (checked here first).

Target: a few microseconds for ordinary mail.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from mailtether import message_id_of
from mailtether._message_key import _message_id_by_parser

ROUNDS = 5

TYPICAL = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Delivered-To: support@example.com\r\n"
    b"Received: from mx.example.org (mx.example.org [192.0.2.7])\r\n"
    b"\tby mail.example.com (Postfix) with ESMTPS id 4ABCD12345\r\n"
    b"\tfor <support@example.com>; Tue, 12 Mar 2024 10:15:02 +0000 (UTC)\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=mail;\r\n"
    b"\tt=1710238502; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"\th=From:To:Subject:Date:Message-ID;\r\n"
    b"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBqdXN0IGZpbGxlciB0ZXh0IGZvciB0aGUg\r\n"
    b"\t YmVuY2htYXJrIGhlcmUgaXMgc29tZSBtb3JlIGZpbGxlciB0ZXh0IGZvciB0aGU=\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Support <support@example.com>\r\n"
    b"Subject: Re: order 1234 \xc3\xa6 has not arrived\r\n"
    b"Date: Tue, 12 Mar 2024 10:15:01 +0000\r\n"
    b"Message-ID: <20240312101501.12345.abcdef@mail.example.org>\r\n"
    b"In-Reply-To: <abc123@example.com>\r\n"
    b"References: <abc123@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n" + b"Hello,\r\nmy order has not arrived yet.\r\n" * 40
)

CASES = {
    "typical, 15 headers, CRLF": TYPICAL,
    "typical, LF": TYPICAL.replace(b"\r\n", b"\n"),
    "typical, no Message-ID": TYPICAL.replace(b"\r\nMessage-ID:", b"\r\nX-No-ID:"),
    "typical, 1 MB body": TYPICAL + b"x" * 1_000_000,
    "listener benchmark, 3 headers": (
        b"From: a@example.com\r\nSubject: 7\r\nMessage-ID: <7@bench>\r\n\r\nbody 7\r\n"
    ),
}


def per_call(function: Callable[[bytes], str | None], raw: bytes) -> float:
    """Return the best time per call in microseconds."""
    timer = timeit.Timer(lambda: function(raw))
    number, _ = timer.autorange()
    return min(timer.repeat(ROUNDS, number)) / number * 1e6


def main() -> None:
    print(f"{'message':32} {'parser µs':>10} {'message_id_of µs':>17} {'speed-up':>9}")
    for name, raw in CASES.items():
        assert message_id_of(raw) == _message_id_by_parser(raw), name
        old = per_call(_message_id_by_parser, raw)
        new = per_call(message_id_of, raw)
        print(f"{name:32} {old:10.1f} {new:17.2f} {old / new:8.0f}x")


if __name__ == "__main__":
    main()
