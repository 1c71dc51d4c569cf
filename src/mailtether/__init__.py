"""mailtether: keep mail listeners connected and honest.

The public API is re-exported here; every other module is private.
"""

from mailtether._backoff import Backoff, BackoffState
from mailtether._check import CheckReport, CheckStep, check
from mailtether._clock import SYSTEM_CLOCK, Clock, SystemClock
from mailtether._config import ENTRY_POINT_GROUP, strategy_from_config
from mailtether._delivery import DeliverMode, Delivery, DeliveryKind
from mailtether._durations import DAY, HOUR, MINUTE, SECOND, WEEK, Duration, parse_duration
from mailtether._errors import (
    AuthenticationFailed,
    ClaimLost,
    CommandFailed,
    ConfigError,
    ConnectionLost,
    FolderMissing,
    ForwardFailed,
    LeaseError,
    LeaseLost,
    LeaseUnavailable,
    LineTooLong,
    MailboxInUse,
    MailboxUnchangeable,
    MailServerError,
    MailtetherError,
    MalformedReply,
    PeerClosed,
    RepeatedMessage,
    ResponseTimeout,
    SchemaError,
    ServerUnreachable,
    StoreError,
    TLSFailure,
)
from mailtether._fleet import Fleet, FleetSource
from mailtether._fleet_registry import FleetWorkerInfo
from mailtether._fleet_worker import FleetWorker
from mailtether._guard import Claim, DuplicateGuard, RepeatPolicy
from mailtether._guard_states import ClaimStatus, GuardEntry, GuardState, HistoryEntry, Triage
from mailtether._keepalive import Keepalive
from mailtether._leases import ProcessLock, acquire_lease
from mailtether._message_key import MessageKey, content_digest, message_id_of
from mailtether._metrics import MetricsCollector, MetricsServer, metrics_collector, serve_metrics
from mailtether._outbox import Outbox
from mailtether._outbox_notifier import OutboxNotifier
from mailtether._outbox_queue import OutboundMail, SendTry
from mailtether._settings import ImapSettings, Security
from mailtether._smtp_notifier import SmtpNotifier
from mailtether._smtp_relay import SmtpRelay
from mailtether._status import (
    LoggingNotifier,
    Notifier,
    SourceState,
    SourceStatus,
    StatusBoard,
    StatusChange,
)
from mailtether._strategies import (
    Capped,
    Chain,
    Exponential,
    Fixed,
    ImmediateFirst,
    Jittered,
    JitterKind,
    ReconnectStrategy,
    Tiered,
)
from mailtether._tokens import (
    AccessToken,
    ClientCredentialsFlow,
    FixedToken,
    RefreshTokenFlow,
    TokenCommand,
    TokenRevoked,
    TokenSource,
    TokenUnavailable,
)
from mailtether._webhook_notifier import WebhookNotifier
from mailtether.imap._connection import ImapConnection
from mailtether.imap._listener import ImapListener
from mailtether.imap._watchdog import KeepaliveWatchdog
from mailtether.pop3._poller import Pop3Poller
from mailtether.stores._memory import MemoryStore
from mailtether.stores._postgres import PostgresStore
from mailtether.stores._protocol import (
    SCHEMA_VERSION,
    KeyLookup,
    Lease,
    Record,
    Store,
    Write,
    default_owner,
)
from mailtether.stores._redis import RedisStore
from mailtether.stores._sqlite import SQLiteStore
from mailtether.stores._url import store_from_url

__all__ = [
    "DAY",
    "ENTRY_POINT_GROUP",
    "HOUR",
    "MINUTE",
    "SCHEMA_VERSION",
    "SECOND",
    "SYSTEM_CLOCK",
    "WEEK",
    "AccessToken",
    "AuthenticationFailed",
    "Backoff",
    "BackoffState",
    "Capped",
    "Chain",
    "CheckReport",
    "CheckStep",
    "Claim",
    "ClaimLost",
    "ClaimStatus",
    "ClientCredentialsFlow",
    "Clock",
    "CommandFailed",
    "ConfigError",
    "ConnectionLost",
    "DeliverMode",
    "Delivery",
    "DeliveryKind",
    "DuplicateGuard",
    "Duration",
    "Exponential",
    "Fixed",
    "FixedToken",
    "Fleet",
    "FleetSource",
    "FleetWorker",
    "FleetWorkerInfo",
    "FolderMissing",
    "ForwardFailed",
    "GuardEntry",
    "GuardState",
    "HistoryEntry",
    "ImapConnection",
    "ImapListener",
    "ImapSettings",
    "ImmediateFirst",
    "JitterKind",
    "Jittered",
    "Keepalive",
    "KeepaliveWatchdog",
    "KeyLookup",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseUnavailable",
    "LineTooLong",
    "LoggingNotifier",
    "MailServerError",
    "MailboxInUse",
    "MailboxUnchangeable",
    "MailtetherError",
    "MalformedReply",
    "MemoryStore",
    "MessageKey",
    "MetricsCollector",
    "MetricsServer",
    "Notifier",
    "OutboundMail",
    "Outbox",
    "OutboxNotifier",
    "PeerClosed",
    "Pop3Poller",
    "PostgresStore",
    "ProcessLock",
    "ReconnectStrategy",
    "Record",
    "RedisStore",
    "RefreshTokenFlow",
    "RepeatPolicy",
    "RepeatedMessage",
    "ResponseTimeout",
    "SQLiteStore",
    "SchemaError",
    "Security",
    "SendTry",
    "ServerUnreachable",
    "SmtpNotifier",
    "SmtpRelay",
    "SourceState",
    "SourceStatus",
    "StatusBoard",
    "StatusChange",
    "Store",
    "StoreError",
    "SystemClock",
    "TLSFailure",
    "Tiered",
    "TokenCommand",
    "TokenRevoked",
    "TokenSource",
    "TokenUnavailable",
    "Triage",
    "WebhookNotifier",
    "Write",
    "acquire_lease",
    "check",
    "content_digest",
    "default_owner",
    "message_id_of",
    "metrics_collector",
    "parse_duration",
    "serve_metrics",
    "store_from_url",
    "strategy_from_config",
]
