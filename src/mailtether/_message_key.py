"""``MessageKey``: what identifies one mail to the duplicate guard."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, Final, Literal

import attrs

__all__ = ["MessageKey", "content_digest", "message_id_of"]

_UIDL: Final = re.compile(r"^[\x21-\x7e]{1,70}$")
_DIGEST: Final = re.compile(r"^[0-9a-f]{64}$")
_MAX_MESSAGE_ID: Final = 512
_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Control characters and lone surrogates (undecodable 8-bit bytes): not a real Message-ID.
_UNUSABLE: Final = re.compile("[\x00-\x20\x7f\ud800-\udfff]")
# A tuple, not a union: isinstance() with "bytes | bytearray | memoryview" builds the union
# on every call (0.2 µs, a tenth of message_id_of on a small message).
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)
# Only the first 64 KiB of a message are searched for its Message-ID.
_HEAD_LIMIT: Final = 65536
_MESSAGE_ID_NAME: Final = rb"[Mm][Ee][Ss][Ss][Aa][Gg][Ee]-[Ii][Dd]:"
# The fast path of message_id_of, exact for the header blocks it matches. email.feedparser
# splits lines at CRLF, CR or LF and reads header lines up to the first line that is
# neither "name:" (visible ASCII but ":"), "From " nor a continuation (a space or tab
# first); Message.get() returns the first header named Message-ID in any case: the rest of
# its line after the colon plus its continuation lines. This pattern walks ordinary header
# lines (a name, a colon, anything but LF: 8-bit values are common and change none of the
# above) with their continuation lines, up to the first Message-ID header (group 1: its
# value, up to the LF that ends it) or the blank line that ends the block (group 1: None).
# Every CR in the match must be that of a CRLF (_LONE_CR), so its lines are the parser's.
# Anything else goes to the parser: a "From " envelope line, a line without a colon or
# with an empty or 8-bit name, a continuation line first, a lone CR, a Message-ID or
# blank line the 64 KiB limit cuts off.
_ORDINARY_HEADERS: Final = re.compile(
    rb"(?:(?!" + _MESSAGE_ID_NAME + rb")[\x21-\x39\x3b-\x7e]++:[^\n]*+\n(?:[ \t][^\n]*+\n)*+)*+"
    rb"(?:" + _MESSAGE_ID_NAME + rb"([^\n]*+(?:\n[ \t][^\n]*+)*+)\n|\r?\n)"
)
_LONE_CR: Final = re.compile(rb"\r(?!\n)")


def content_digest(raw: bytes) -> str:
    r"""Return the SHA-256 of a raw message, with line endings normalised.

    Servers may store a message with LF and serve it with CRLF (or the other way round);
    the digest is the same either way.

    Example:
        >>> from mailtether import content_digest
        >>> crlf = content_digest(b"Subject: hi\r\n\r\nbody\r\n")
        >>> crlf == content_digest(b"Subject: hi\n\nbody\n")
        True
    """
    if not isinstance(raw, _BYTES_LIKE):
        raise TypeError(f"raw must be bytes, not {type(raw).__name__}")
    return hashlib.sha256(bytes(raw).replace(b"\r\n", b"\n")).hexdigest()


def message_id_of(raw: bytes) -> str | None:
    r"""Return the Message-ID header of a raw message, or ``None`` if it has no usable one.

    Never raises on malformed mail: 8-bit garbage, control characters, missing or empty
    headers give ``None``.
    Folded whitespace is removed; a value over 512 characters is ignored as bogus. Only the
    first 64 KiB of the message are read.

    The result is exactly what :class:`email.parser.BytesHeaderParser` (policy ``compat32``)
    finds as the first Message-ID header. Ordinary header blocks are read by one regular
    expression in a few microseconds; anything unusual (a lone CR, an envelope ``From``
    line, a malformed header line, 8-bit bytes in the Message-ID, a header block that
    reaches neither its Message-ID nor its blank line within the first 64 KiB) goes to
    that parser itself.

    Args:
        raw: The message as the server sent it.

    Returns:
        The Message-ID without any whitespace, or ``None``.

    Raises:
        TypeError: *raw* is not bytes-like.

    Example:
        >>> from mailtether import message_id_of
        >>> message_id_of(b"Subject: hi\r\nMessage-ID:\r\n <a.1@example.com>\r\n\r\nbody\r\n")
        '<a.1@example.com>'
        >>> message_id_of(b"Subject: no id\r\n\r\nbody\r\n") is None
        True
    """
    if not isinstance(raw, _BYTES_LIKE):
        raise TypeError(f"raw must be bytes, not {type(raw).__name__}")
    head, limit = raw, _HEAD_LIMIT
    if type(raw) is not bytes:  # bytes are read in place, without a 64 KiB copy
        head = bytes(raw[:_HEAD_LIMIT])
        limit = len(head)
    found = _ORDINARY_HEADERS.match(head, 0, limit)
    if found is None or _LONE_CR.search(head, 0, found.end()):
        return _message_id_by_parser(raw)
    value = found.group(1)
    if value is None:  # the blank line came first
        return None
    if not value.isascii():  # the parser turns 8-bit bytes into U+FFFD: let it
        return _message_id_by_parser(raw)
    return _usable_message_id(value.decode("ascii"))


def _message_id_by_parser(raw: bytes) -> str | None:
    """Return the Message-ID the way :func:`message_id_of` did before its fast path.

    The reference for the fast path (and its fallback): the stdlib header parser on the
    first 64 KiB, then the first Message-ID header. Never raises on malformed mail.

    Args:
        raw: The message as the server sent it (bytes-like).

    Returns:
        The Message-ID without any whitespace, or ``None``.
    """
    header_end = bytes(raw[:_HEAD_LIMIT])
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_end)
        value = headers.get("Message-ID")
    except Exception:  # malformed mail must never stop the listener
        return None
    if value is None:
        return None
    return _usable_message_id(str(value))


def _usable_message_id(value: str) -> str | None:
    """Return *value* without whitespace, or ``None`` if empty, too long or unusable."""
    text = "".join(value.split())
    if not text or len(text) > _MAX_MESSAGE_ID or _UNUSABLE.search(text):
        return None
    return text


_encode_string: Final = json.encoder.encode_basestring  # what _ENCODE uses for a str


@functools.lru_cache(maxsize=256)
def _imap_prefix(account: str, folder: str, uidvalidity: int) -> str:
    return _ENCODE(["imap", account, folder, uidvalidity])[:-1]


@functools.lru_cache(maxsize=256)
def _content_prefix(account: str, folder: str) -> str:
    return _ENCODE([account, folder])[:-1]


def _text(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise TypeError(f"MessageKey.{name} must be a str, not {type(value).__name__}")
        if not value or "\x00" in value or len(value) > 512:
            raise ValueError(f"MessageKey.{name} must be 1-512 characters without NUL")

    return check


def _positive(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"MessageKey.{name} must be an int, not {type(value).__name__}")
        if not 1 <= value < 2**32:
            raise ValueError(f"MessageKey.{name} must be between 1 and 2**32 - 1, got {value}")

    return check


def _check_uidl(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _UIDL.match(value):
        raise ValueError(
            f"MessageKey.uidl must be 1-70 printable ASCII characters (RFC 1939), got {value!r}"
        )


def _check_digest(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not _DIGEST.match(value)):
        raise ValueError("MessageKey.digest must be a SHA-256 hex digest (see content_digest)")


def _content_of(
    raw: bytes | None, message_id: str | None, digest: str | None
) -> tuple[str | None, str | None]:
    """The Message-ID and digest a key gets: those given, else (with *raw*) those of *raw*."""
    if raw is not None:
        message_id = message_id if message_id is not None else message_id_of(raw)
        digest = digest if digest is not None else content_digest(raw)
    return message_id, digest


@attrs.frozen
class MessageKey:
    """What identifies one mail: its mailbox position, plus its content when known.

    Build one with :meth:`imap` or :meth:`pop3`. The position (:attr:`id`) is the primary
    key: account, folder, UIDVALIDITY and UID for IMAP (a folder recreated with a new
    UIDVALIDITY restarts UIDs at 1, so the UID alone would skip new mail), or account and
    UIDL for POP3. The Message-ID and the content digest ride along: when both the position
    is new and the content (:attr:`content_id`) was already processed, the guard knows it is
    the same mail under a new UID. Content is matched only by digest (with the Message-ID
    beside it), never by Message-ID alone: real mail often has none, or repeats one.

    Example:
        >>> from mailtether import MessageKey
        >>> key = MessageKey.imap("support@example.com", "INBOX", uidvalidity=7, uid=42)
        >>> key.id
        '["imap","support@example.com","INBOX",7,42]'
    """

    protocol: Literal["imap", "pop3"] = attrs.field(
        validator=attrs.validators.in_(("imap", "pop3"))
    )
    account: str = attrs.field(validator=_text("account"))
    folder: str | None = attrs.field(default=None, validator=_text("folder"))
    uidvalidity: int | None = attrs.field(default=None, validator=_positive("uidvalidity"))
    uid: int | None = attrs.field(default=None, validator=_positive("uid"))
    uidl: str | None = attrs.field(default=None, validator=_check_uidl)
    message_id: str | None = attrs.field(default=None, validator=_text("message_id"))
    digest: str | None = attrs.field(default=None, validator=_check_digest)

    def __attrs_post_init__(self) -> None:
        if self.protocol == "imap":
            if self.folder is None or self.uidvalidity is None or self.uid is None:
                raise ValueError("an IMAP MessageKey needs folder, uidvalidity and uid")
            if self.uidl is not None:
                raise ValueError("an IMAP MessageKey has no uidl")
        else:
            if self.uidl is None:
                raise ValueError("a POP3 MessageKey needs a uidl")
            if self.uid is not None or self.uidvalidity is not None:
                raise ValueError("a POP3 MessageKey has no uid or uidvalidity")

    @classmethod
    def imap(
        cls,
        account: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        *,
        message_id: str | None = None,
        digest: str | None = None,
        raw: bytes | None = None,
    ) -> MessageKey:
        """Key an IMAP message; pass *raw* to fill in the Message-ID and digest from it."""
        message_id, digest = _content_of(raw, message_id, digest)
        return cls("imap", account, folder, uidvalidity, uid, None, message_id, digest)

    @classmethod
    def pop3(
        cls,
        account: str,
        uidl: str,
        *,
        message_id: str | None = None,
        digest: str | None = None,
        raw: bytes | None = None,
    ) -> MessageKey:
        """Key a POP3 message by its UIDL; *raw* fills in the Message-ID and digest."""
        message_id, digest = _content_of(raw, message_id, digest)
        return cls("pop3", account, None, None, None, uidl, message_id, digest)

    def with_uid(self, uid: int) -> MessageKey:
        """This IMAP key for another *uid* of the same folder and UIDVALIDITY, without content.

        Quick (no validators run again but the UID's): for keying every UID of a listing.
        """
        return self._build_imap(uid, None, None)

    def with_content(self, raw: bytes) -> MessageKey:
        """This key with the Message-ID and content digest of *raw* (the mail's bytes)."""
        message_id, digest = message_id_of(raw), content_digest(raw)
        if self.protocol == "imap":
            assert self.uid is not None
            derived = self._build_imap(self.uid, message_id, digest)
            object.__setattr__(derived, "id", self.id)  # the same position: the same id
            return derived
        return attrs.evolve(self, message_id=message_id, digest=digest)

    @property
    def scope(self) -> str:
        """The :attr:`id` prefix every key of this mailbox shares.

        For IMAP the folder *and* its UIDVALIDITY (a recreated folder is another scope);
        for POP3 the account. ``key.id.startswith(scope)`` finds a mailbox's records.
        """
        if self.protocol == "imap":
            assert self.folder is not None
            assert self.uidvalidity is not None
            return _imap_prefix(self.account, self.folder, self.uidvalidity) + ","
        return _ENCODE(["pop3", self.account])[:-1] + ","

    def _build_imap(self, uid: int, message_id: str | None, digest: str | None) -> MessageKey:
        # The hot path of a catch-up: account, folder and UIDVALIDITY were checked when this
        # key was made, the UID is checked here, and message_id and digest come from
        # message_id_of and content_digest, which only return valid ones.
        if self.protocol != "imap" or isinstance(uid, bool) or not isinstance(uid, int):
            raise TypeError("with_uid makes IMAP keys from an int UID")
        if not 1 <= uid < 2**32:
            raise ValueError(f"MessageKey.uid must be between 1 and 2**32 - 1, got {uid}")
        derived: MessageKey = object.__new__(MessageKey)
        assign = object.__setattr__
        assign(derived, "protocol", "imap")
        assign(derived, "account", self.account)
        assign(derived, "folder", self.folder)
        assign(derived, "uidvalidity", self.uidvalidity)
        assign(derived, "uid", uid)
        assign(derived, "uidl", None)
        assign(derived, "message_id", message_id)
        assign(derived, "digest", digest)
        return derived

    @functools.cached_property
    def id(self) -> str:
        """The position key: unique per mailbox slot, stable across restarts."""
        if self.protocol == "imap":
            # The JSON of ["imap", account, folder, uidvalidity, uid], its prefix cached.
            assert self.folder is not None
            assert self.uidvalidity is not None
            return f"{_imap_prefix(self.account, self.folder, self.uidvalidity)},{self.uid}]"
        return _ENCODE(["pop3", self.account, self.uidl])

    @functools.cached_property
    def content_id(self) -> str | None:
        """The content key (account, folder, Message-ID, digest), or ``None`` without a digest."""
        if self.digest is None:
            return None
        # The JSON of [account, folder or "", message_id or "", digest], its prefix cached.
        message_id = _encode_string(self.message_id or "")
        return f'{_content_prefix(self.account, self.folder or "")},{message_id},"{self.digest}"]'

    @classmethod
    def from_id(
        cls, key_id: str, *, message_id: str | None = None, digest: str | None = None
    ) -> MessageKey:
        """Rebuild a key from its :attr:`id` (plus the content fields, which it lacks).

        Raises:
            ValueError: *key_id* is not an id this class made.
        """
        try:
            parts = json.loads(key_id)
        except ValueError:
            parts = None
        if isinstance(parts, list) and len(parts) == 5 and parts[0] == "imap":
            _, account, folder, uidvalidity, uid = parts
            return cls("imap", account, folder, uidvalidity, uid, None, message_id, digest)
        if isinstance(parts, list) and len(parts) == 3 and parts[0] == "pop3":
            return cls("pop3", parts[1], None, None, None, parts[2], message_id, digest)
        raise ValueError(f"not a MessageKey id: {key_id[:100]!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the key as a JSON-compatible dict."""
        return {
            "protocol": self.protocol,
            "account": self.account,
            "folder": self.folder,
            "uidvalidity": self.uidvalidity,
            "uid": self.uid,
            "uidl": self.uidl,
            "message_id": self.message_id,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MessageKey:
        """Rebuild a key saved with :meth:`to_dict`."""
        return cls(**data)

    def __str__(self) -> str:
        if self.protocol == "imap":
            return f"{self.account} {self.folder} UID {self.uid} (UIDVALIDITY {self.uidvalidity})"
        return f"{self.account} UIDL {self.uidl}"
