"""A password in a URL never shows: not in a parse error, not in ``redact_url``, however written.

Issue 17, part 2. People paste passwords into URLs unencoded; urllib then reads a ``/`` in the
password as the start of the path and quotes the first half in "Port could not be cast to
integer value as 'hunter2'". Every URL mailtether reads (``imaps imap pop3s pop3 redis rediss
postgresql postgres``) must either read right or be refused with an error that names the
part, shows the URL with ``***`` and says what to percent-encode.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtether import ConfigError, ImapSettings, store_from_url
from mailtether._url_errors import split_url
from mailtether.stores._shared import redact_url

redis = pytest.importorskip("redis")
psycopg = pytest.importorskip("psycopg")

Read = Callable[[str], tuple[str | None, str | None, str | None]]
"""Read a URL as its user does: (host, user name, password), or raise ConfigError."""


def _imap(url: str) -> tuple[str | None, str | None, str | None]:
    found = ImapSettings.from_url(url)
    return found.host, found.username, found.password


def _pop3(url: str) -> tuple[str | None, str | None, str | None]:
    found = ImapSettings.from_pop3_url(url)
    return found.host, found.username, found.password


def _redis(url: str) -> tuple[str | None, str | None, str | None]:
    from mailtether.stores._redis import _read_url

    clean, _prefix = _read_url(url, "mailtether")
    found = redis.connection.parse_url(clean)  # as redis-py reads what RedisStore gives it
    return found.get("host"), found.get("username"), found.get("password")


def _postgres(url: str) -> tuple[str | None, str | None, str | None]:
    from mailtether.stores._postgres import _read_url

    dsn, _prefix, _options, password, _prepared = _read_url(url, "mailtether", False, psycopg)
    found = psycopg.conninfo.conninfo_to_dict(dsn)  # as libpq reads what PostgresStore gives it
    return found.get("host"), found.get("user"), password


# scheme: (the URL with {} for the password, the host and user name in it, how it is read)
SCHEMES: dict[str, tuple[str, str, str | None, Read]] = {
    "imaps": ("imaps://alice:{}@mail.example.com:993/INBOX", "mail.example.com", "alice", _imap),
    "imap": ("imap://alice:{}@mail.example.com:143/INBOX", "mail.example.com", "alice", _imap),
    "pop3s": ("pop3s://alice:{}@mail.example.com:995/", "mail.example.com", "alice", _pop3),
    "pop3": ("pop3://alice:{}@mail.example.com/", "mail.example.com", "alice", _pop3),
    "redis": (
        "redis://:{}@redis.example.com:6379/0?prefix=mail",
        "redis.example.com",
        None,
        _redis,
    ),
    "rediss": ("rediss://:{}@redis.example.com/1", "redis.example.com", None, _redis),
    "postgresql": (
        "postgresql://mail:{}@db.example.com:5432/mail?table_prefix=mt",
        "db.example.com",
        "mail",
        _postgres,
    ),
    "postgres": ("postgres://mail:{}@db.example.com/mail", "db.example.com", "mail", _postgres),
}

DELIMITERS = '/?#@:%[]"\\ '
"""What a URL reads as structure, and what quoting escapes: drawn often."""
OTHERS = "'&=;+$,!*()~`^{}|<>éß€漢\uff0f\uff20\uff03\uff1f\uff1a٣\u00a0\u200b\U0001f511"
"""Other punctuation, and non-ASCII: some that NFKC turns into a delimiter (fullwidth / @ # ? :)."""
PASSWORDS = st.text(
    alphabet=st.one_of(
        st.sampled_from(DELIMITERS),
        st.sampled_from(OTHERS),
        st.characters(exclude_categories=("Cs", "Cc")),  # the printable range, and beyond ASCII
    ),
    min_size=1,
    max_size=24,
)
PASSWORDS = st.one_of(  # half of them with a delimiter for certain: the errors are tried often
    PASSWORDS,
    st.builds("".join, st.tuples(PASSWORDS, st.sampled_from("/?#@["), PASSWORDS)),
)


def _outcome(read: Read, url: str) -> tuple[str | None, str | None, str | None] | ConfigError:
    try:
        return read(url)
    except ConfigError as error:
        return error


def _raise_of(read: Read, url: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read(url)
    return info.value


@cache
def _vocabulary() -> str:
    """The words of every URL error (its repr), from URLs broken in every way with password PW."""
    broken = ["PW/x", "PW?x", "PW#x", "P@W/x", "P[W", "PW\uff0f", "P W", "P%W", "P%00W", "P@W"]
    texts = []
    for template, _host, _user, read in SCHEMES.values():
        for password in broken:
            try:
                read(template.format(password))
            except ConfigError as error:
                texts.append(repr(error))
        for url in (template.replace(":993", ":99x"), template.replace("{}", "PW") + "?x=1"):
            try:
                read(url.replace("{}", "PW"))
            except ConfigError as error:
                texts.append(repr(error))
    return "\n".join(texts)


def _texts(error: BaseException) -> list[str]:
    """Everything an exception shows: str, repr, args, and the same of what it chains."""
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found += [str(current), repr(current), *map(str, current.args), *map(repr, current.args)]
        for chained in (current.__cause__, current.__context__):
            if chained is not None and chained is not current:
                found += [str(chained), repr(chained)]
        current = current.__cause__ or current.__context__
    return found


def _leaks(password: str, text: str, background: str) -> list[str]:
    """The pieces of 4 characters of *password* (raw or percent-encoded) that *text* shows.

    A piece found in *background* (the URL around the password, the errors' own words) is
    there by chance, not leaked. Any longer piece holds a piece of four.
    """
    leaked = []
    for form in {password, quote(password, safe="")}:
        for start in range(len(form) - 3):
            piece = form[start : start + 4]
            if piece in text and piece not in background:
                leaked.append(piece)
    return leaked


@pytest.mark.parametrize("scheme", SCHEMES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=PASSWORDS)
def test_a_password_in_a_url_never_shows(scheme, password):
    template, host, user, read = SCHEMES[scheme]
    for url, encoded in (
        (template.format(password), False),
        (template.format(quote(password, safe="")), True),
    ):
        background = "\n".join(
            [template.replace("{}", ""), template.replace("{}", "***"), _vocabulary()]
        )
        shown = redact_url(url)
        assert _leaks(password, shown, background) == [], (url, shown)
        found = _outcome(read, url)
        if isinstance(found, ConfigError):
            assert not encoded, f"a percent-encoded password must be read: {found}"
            assert found.__cause__ is None
            for text in _texts(found):
                assert _leaks(password, text, background) == [], (url, text)
            assert "***" in str(found) or "://" not in str(found)
            continue
        assert found[:2] == (host, user), f"{url} read as host and user {found[:2]}"
        if encoded:
            assert found[2] == password


# -- what the errors say ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("character", "escape"), [("/", "%2F"), ("?", "%3F"), ("#", "%23")], ids=["slash", "?", "#"]
)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_unencoded_delimiter_is_named_with_its_escape(scheme, character, escape):
    template, host, user, read = SCHEMES[scheme]
    error = _raise_of(read, template.format(f"hunter2{character}s3cret"))
    message = str(error)
    assert message.startswith(f"the password of {scheme}://{user or ''}:***@{host}")
    assert f"percent-encode `{character}` in the password as {escape}" in message
    for secret in ("hunt", "unter2", "s3cr", "%2Fs3", "ter2"):
        assert secret not in message
        assert secret not in repr(error)
    assert error.__cause__ is None
    assert error.__context__ is None
    assert error.args == (message,)


def test_the_port_is_named_and_urllib_never_quoted():
    error = _raise_of(_imap, "imaps://alice:pw@mail.example.com:99x/INBOX")
    assert str(error).startswith("the port of imaps://alice:***@mail.example.com:")
    assert "could not be cast" not in str(error)
    error = _raise_of(_imap, "imaps://alice:hunter2@mail.example.com:70000/INBOX")
    assert "the port of" in str(error)
    assert "hunter2" not in str(error)


def test_a_password_with_no_at_and_no_host_is_not_taken_for_a_port():
    # redis://:secret/0 reads as host "" and port "secret": never show that "port".
    error = _raise_of(_redis, "redis://:hunter2secret/0")
    assert "hunter2" not in str(error)
    assert "secret" not in str(error)
    assert "the port of redis://:***" in str(error)
    assert "password goes before the host" in str(error)


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("hun[ter2", "percent-encode `[` in the password as %5B"),
        ("hunter2\uff0fx", "Unicode normalization"),
    ],
)
def test_what_urllib_refuses_in_a_password_is_named(password, says):
    error = _raise_of(_imap, f"imaps://alice:{password}@mail.example.com/")
    assert says in str(error)
    assert "hunter2" not in str(error)
    assert "ter2" not in str(error)
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("hunter2@x", "percent-encode `@` in the password as %40"),
        ("hunter2 x", "percent-encode ` ` in the password as %20"),
        ("50%offhunter2", "percent-encode `%` in the password as %25"),
        ("hunter2%00x", "%00"),
    ],
)
def test_what_libpq_reads_otherwise_or_quotes_is_refused_first(password, says):
    error = _raise_of(_postgres, f"postgresql://mail:{password}@db.example.com/mail")
    assert says in str(error)
    assert "hunter2" not in str(error)
    assert "offh" not in str(error)


def test_a_raw_at_in_an_imap_password_still_reads():
    # urllib takes the last @ before the host: these worked before and still do.
    found = ImapSettings.from_url("imaps://bob@example.com:p@ss:w0rd@mail.example.com/INBOX")
    assert (found.host, found.username, found.password) == (
        "mail.example.com",
        "bob@example.com",
        "p@ss:w0rd",
    )


def test_an_at_after_the_host_is_refused_and_percent_encoded_it_reads():
    # "p@ss/hunter2" unencoded would read as host "ss", folder "hunter2@mail..." and send the
    # connection (and the errors) to a host named after the password: refused instead.
    error = _raise_of(_imap, "imaps://alice:p@ss/hunter2@mail.example.com/INBOX")
    assert "percent-encode `/` in the password as %2F and `@` as %40" in str(error)
    assert "hunter2" not in str(error)
    # A folder holding @ is written %40, as the message says.
    found = ImapSettings.from_url("imaps://alice:pw@mail.example.com/shared/bob%40example.com")
    assert found.folder == "shared/bob@example.com"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2/x@127.0.0.1:1/0",
        "rediss://:hunter2?x@127.0.0.1:1/0",
        "postgresql://mail:hunter2#x@127.0.0.1:1/db",
        "postgres://mail:hunter2@x/y@127.0.0.1:1/db",
        "redis://:hunter2\uff0fx@127.0.0.1:1/0",
    ],
)
def test_store_urls_are_refused_before_any_connection(url):
    with pytest.raises(ConfigError) as info:
        store_from_url(url)
    assert "hunter2" not in str(info.value)
    assert "nter2" not in repr(info.value)
    assert info.value.__context__ is None


def test_an_at_in_a_path_with_no_authority_is_the_paths():
    parts = split_url("unix:///run/redis-server@main/redis.sock?db=1")
    assert parts.path == "/run/redis-server@main/redis.sock"
    assert redact_url("unix:///run/redis-server@main/redis.sock") == (
        "unix:///run/redis-server@main/redis.sock"
    )


def test_split_url_gives_what_urlsplit_gives_for_good_urls():
    parts = split_url("imaps://a%40b:p%2Fw@[::1]:993/INBOX?auth=xoauth2")
    assert (parts.hostname, parts.port, parts.username, parts.password) == (
        "::1",
        993,
        "a%40b",
        "p%2Fw",
    )


# -- redact_url ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("imaps://alice:pa/ss?w#o@rd:x@host:993/INBOX", "imaps://alice:***@host:993/INBOX"),
        ("redis://:hunter2/secret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:a@b@h/db?password=x&y=1", "postgresql://u:***@h/db?password=***&y=1"),
        ("imaps://al/ice:pw@host/", "imaps://***@host/"),  # no telling what the user name is
        ("redis://hunter2/x@host/0", "redis://***@host/0"),
        ("redis://:hunter2secret/0", "redis://:***"),  # a "port" that is no number
        ("redis:hunter2@host", "redis:***@host"),  # no // to read the user part from
        ("hunter2:secret://host", "***://host"),
        ("imaps://alice:pw@[::1]:993/", "imaps://alice:***@[::1]:993/"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("postgresql://mail@h/db", "postgresql://mail@h/db"),
        ("sqlite:///var/x@y.db", "sqlite:///var/x@y.db"),  # no authority: the @ is the path's
    ],
)
def test_redact_url_hides_the_whole_password(url, shown):
    assert redact_url(url) == shown
