"""``mailtether queue``: the outbox's mail, one mail's history, and the error queue's fate.

The mail by relay and by recipient domain; ``show`` one mail's tries; ``release`` and
``drop`` for the error queue and held mail.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from mailtether._outbox_queue import OutboundMail, OutboxQueue, QueueLine
from mailtether.cli._config_file import add_store_arguments
from mailtether.cli._outcome import NOT_FOUND, OK, USAGE, answer, when, write_json, write_table
from mailtether.stores._protocol import Store

__all__ = ["add_queue_arguments", "run_queue"]


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mailtether queue``."""
    parser.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "show", "release", "drop", "run"],
        help="list (the default); show / release / drop one mail; run: send the outbox",
    )
    parser.add_argument(
        "message_id", nargs="?", help="the mail's Message-ID, for show/release/drop"
    )
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--relay",
        action="append",
        default=[],
        help="run: an SMTP relay URL (smtps://user:pw@host/ or smtp://, STARTTLS); repeatable; "
        "default: MAILTETHER_RELAY, or relay = … in the settings file",
    )
    parser.add_argument(
        "--once", action="store_true", help="run: one pass over due mail, then exit"
    )


def run_queue(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Print or change the outbox's queue in *store*."""
    queue = OutboxQueue(store)
    if args.action == "list":
        return _list(queue, args, out)
    if args.action == "run":
        return _run(store, args, out)
    if not args.message_id:
        out.write(f"mailtether queue {args.action}: which mail? give its Message-ID\n")
        return NOT_FOUND
    if args.action == "show":
        return _show(queue, args, out)
    change = queue.release if args.action == "release" else queue.drop
    done = change(args.message_id)
    verb = {"release": "released", "drop": "dropped"}[args.action]
    said = verb if done else "not found, or not failed or held"
    return answer(
        out, as_json=args.json, field="message_id", subject=args.message_id, done=done, said=said
    )


def _run(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """Send the outbox through the relays given (the first unless a mail names another)."""
    from mailtether._outbox import Outbox
    from mailtether._status import StatusBoard
    from mailtether.smtp._relay_url import relay_from_url

    if not args.relay:
        out.write(
            "mailtether queue run: give the relay: --relay smtps://user:pw@host/, "
            "MAILTETHER_RELAY, or relay = … in the settings file\n"
        )
        return USAGE
    relays = [relay_from_url(url) for url in args.relay]
    outbox = Outbox(store, relays, status=StatusBoard(store))
    if args.once:
        sent = outbox.deliver_due()
        out.write(f"sent {sent}; " + _counts(outbox.counts()) + "\n")
        return OK
    names = ", ".join(relay.name for relay in relays)
    out.write(f"sending the outbox through {names}; Ctrl-C stops\n")
    try:
        outbox.run()
    except KeyboardInterrupt:
        outbox.stop()
    out.write(_counts(outbox.counts()) + "\n")
    return OK


def _counts(counts: dict[str, int]) -> str:
    return "mails: " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none")


def _list(queue: OutboxQueue, args: argparse.Namespace, out: TextIO) -> int:
    summary = queue.summary()
    attention = queue.mails("failed") + queue.mails("held")
    if args.json:
        write_json(
            out,
            {
                "counts": queue.counts(),
                "relays": {name: line.to_dict() for name, line in summary["relays"].items()},
                "domains": {name: line.to_dict() for name, line in summary["domains"].items()},
                "attention": [_mail_dict(mail) for mail in attention],
            },
            indent=2,
        )
        return OK
    counts = queue.counts()
    if not counts:
        out.write("the outbox is empty\n")
        return OK
    out.write(_counts(counts) + "\n")
    for title, lines in (("RELAY", summary["relays"]), ("DOMAIN", summary["domains"])):
        if lines:
            out.write("\n")
            write_table(
                out,
                [title, "ACTIVE", "DELAYED", "FAILED", "HELD", "OLDEST", "NEXT TRY"],
                [_line_row(name, line) for name, line in lines.items()],
            )
    if attention:
        out.write("\nneeds a person (mailtether queue release|drop MESSAGE-ID):\n")
        write_table(
            out,
            ["MESSAGE-ID", "STATE", "TRIES", "REASON"],
            [[m.message_id, m.state, str(m.attempts), m.reason] for m in attention],
        )
    return OK


def _show(queue: OutboxQueue, args: argparse.Namespace, out: TextIO) -> int:
    mail = queue.get(args.message_id)
    if mail is None:
        out.write(f"{args.message_id}: not in the outbox\n")
        return NOT_FOUND
    if args.json:
        write_json(out, _mail_dict(mail), indent=2)
        return OK
    out.write(f"{mail.message_id}: {mail.state}, via {mail.relay}, {mail.attempts} tries\n")
    out.write(f"  from {mail.sender}, queued {when(mail.queued_at)}")
    out.write(f", next try {when(mail.next_at)}\n" if mail.state == "queued" else "\n")
    for recipient, state in mail.recipients.items():
        out.write(f"  {state:<8} {recipient}\n")
    if mail.reason:
        out.write(f"  reason: {mail.reason}\n")
    if mail.history:
        out.write("\n")
        write_table(
            out,
            ["WHEN", "RELAY", "OUTCOME", "RECIPIENTS", "REPLY"],
            [
                [when(t.at), t.relay, t.outcome, ", ".join(t.recipients), t.reply]
                for t in mail.history
            ],
        )
    return OK


def _mail_dict(mail: OutboundMail) -> dict[str, object]:
    return {
        "message_id": mail.message_id,
        "state": mail.state,
        "sender": mail.sender,
        "recipients": dict(mail.recipients),
        "relay": mail.relay,
        "queued_at": mail.queued_at,
        "next_at": mail.next_at,
        "attempts": mail.attempts,
        "reason": mail.reason,
        "history": [t.to_dict() for t in mail.history],
    }


def _line_row(name: str, line: QueueLine) -> list[str]:
    return [
        name,
        str(line.active),
        str(line.delayed),
        str(line.failed),
        str(line.held),
        when(line.oldest),
        when(line.next_at),
    ]
