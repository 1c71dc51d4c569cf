"""One configuration story for every command: flags > MAILTETHER_* > the TOML file > defaults."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mailtether import SourceState, SQLiteStore, StatusBoard
from mailtether.cli._config_file import ConfigFile
from mailtether.cli._main import _parser, main
from mailtether.cli._watch import _settings
from servers.smtp import Scripted, smtp_server
from servers.webhook import WebhookReceiver


def run(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out, environ=environ or {})
    return code, out.getvalue()


def a_store(tmp_path: Path, name: str, *sources: str) -> str:
    """A SQLite store where *sources* have reported; its URL."""
    path = tmp_path / f"{name}.db"
    store = SQLiteStore(path)
    board = StatusBoard(store, notifiers=[])
    for source in sources:
        board.set(source, SourceState.ONLINE)
    store.close()
    return f"sqlite:{path}"


def sources_seen(code_and_text: tuple[int, str]) -> list[str]:
    code, text = code_and_text
    assert code == 0, text
    return [status["source"] for status in json.loads(text)["sources"]]


# -- the store: flag > environment > file ------------------------------------------------------


def test_the_store_flag_beats_the_environment_which_beats_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from_flag = a_store(tmp_path, "flag", "flag@example.com/INBOX")
    from_env = a_store(tmp_path, "env", "env@example.com/INBOX")
    from_file = a_store(tmp_path, "file", "file@example.com/INBOX")
    (tmp_path / "mailtether.toml").write_text(f'store = "{from_file}"\n')
    env = {"MAILTETHER_STORE": from_env}

    assert sources_seen(run("status", "--json")) == ["file@example.com/INBOX"]
    assert sources_seen(run("status", "--json", environ=env)) == ["env@example.com/INBOX"]
    assert sources_seen(run("status", "--json", "--store", from_flag, environ=env)) == [
        "flag@example.com/INBOX"
    ]


def test_the_store_under_watch_serves_every_command_when_none_is_at_the_top(tmp_path):
    url = a_store(tmp_path, "state", "a@example.com/INBOX")
    (tmp_path / "helpdesk.toml").write_text(f'[watch]\nstore = "{url}"\n')
    config = str(tmp_path / "helpdesk.toml")
    assert sources_seen(run("status", "--json", "--config", config)) == ["a@example.com/INBOX"]


@pytest.mark.parametrize("command", ["status", "pause", "resume", "release", "drop", "queue"])
def test_a_missing_store_is_one_line_naming_the_three_ways(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # no mailtether.toml here
    argv = [command] + (["x"] if command in ("pause", "resume", "release", "drop") else [])
    code, text = run(*argv)
    assert code == 2
    assert text == (
        f"mailtether: {command} needs a store: give --store URL, set MAILTETHER_STORE, or put "
        'store = "…" in mailtether.toml\n'
    )


# -- the file: --config > MAILTETHER_CONFIG > ./mailtether.toml ---------------------------------


def test_which_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("default", "env", "flag"):
        url = a_store(tmp_path, name, f"{name}@example.com/INBOX")
        path = "mailtether.toml" if name == "default" else f"{name}.toml"
        (tmp_path / path).write_text(f'store = "{url}"\n')
    env = {"MAILTETHER_CONFIG": "env.toml"}
    assert sources_seen(run("status", "--json")) == ["default@example.com/INBOX"]
    assert sources_seen(run("status", "--json", environ=env)) == ["env@example.com/INBOX"]
    assert sources_seen(run("status", "--json", "--config", "flag.toml", environ=env)) == [
        "flag@example.com/INBOX"
    ]


def test_a_named_file_that_is_missing_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = run("status", "--config", "nope.toml")
    assert code == 2
    assert text.startswith("mailtether: cannot read nope.toml: ")
    assert text.count("\n") == 1


# -- a watch setting: flag > environment > file > default ---------------------------------------


def watch_settings(tmp_path: Path, *flags: str, environ: dict[str, str]) -> dict[str, object]:
    args = _parser().parse_args(["watch", *flags])
    return _settings(args, ConfigFile.load(args.config, environ, cwd=tmp_path))


def test_a_watch_setting_flag_beats_environment_beats_file(tmp_path):
    assert "poll_interval" not in watch_settings(tmp_path, environ={})  # the listener's default
    (tmp_path / "mailtether.toml").write_text('[watch]\npoll_interval = "3m"\nmode = "poll"\n')
    assert watch_settings(tmp_path, environ={})["poll_interval"] == 180.0
    env = {"MAILTETHER_POLL_INTERVAL": "2m"}
    got = watch_settings(tmp_path, environ=env)
    assert (got["poll_interval"], got["mode"]) == (120.0, "poll")
    assert watch_settings(tmp_path, "--poll-interval", "1m", environ=env)["poll_interval"] == 60.0


def test_store_for_watch_its_section_beats_the_top_of_the_file(tmp_path):
    (tmp_path / "mailtether.toml").write_text(
        'store = "sqlite:top.db"\nrelay = "smtp://relay.example.com/"\n'
        '[watch]\nstore = "sqlite:watch.db"\n'
    )
    got = watch_settings(tmp_path, environ={})
    assert (got["store"], got["relay"]) == ("sqlite:watch.db", "smtp://relay.example.com/")
    got = watch_settings(tmp_path, environ={"MAILTETHER_STORE": "sqlite:env.db"})
    assert got["store"] == "sqlite:env.db"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("MAILTETHER_POLL_INTERVAL", "soon", "MAILTETHER_POLL_INTERVAL must be a positive"),
        ("MAILTETHER_MAX_FAILURES", "0", "MAILTETHER_MAX_FAILURES must be a whole number >= 1"),
        ("MAILTETHER_MODE", "push", "MAILTETHER_MODE must be one of auto, poll, not 'push'"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(tmp_path, monkeypatch, variable, value, words):
    monkeypatch.chdir(tmp_path)
    env = {"MAILTETHER_URL": "imaps://u:p@example.com/", "MAILTETHER_HANDLER": "json:dumps"}
    code, text = run(
        "watch", "--store", f"sqlite:{tmp_path}/s.db", environ={**env, variable: value}
    )
    assert code == 2
    assert text.startswith(f"mailtether: {words}"), text
    assert not (tmp_path / "s.db").exists()


# -- errors name the file and the key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[status]\nquiet_perod = 60\n", "status.quiet_perod in cfg.toml is not a setting"),
        ('[status]\noffline_after = "soon"\n', "status.offline_after in cfg.toml must be"),
        ("[watch]\npol_interval = 5\n", "watch.pol_interval in cfg.toml is not a setting"),
        ("stor = 'sqlite:x.db'\n[watch]\n", "stor in cfg.toml is not a setting"),
        (
            '[[notify.smtp]]\nhost = "h"\nrecipients = ["a@example.com"]\n',
            "notify.smtp[1].sender in cfg.toml is missing",
        ),
        (
            '[[notify.smtp]]\nhost = "h"\nsender = "s@example.com"\nrecipients = "a@example.com"\n',
            "notify.smtp[1].recipients in cfg.toml must be a list of strings",
        ),
        (
            '[[notify.smtp]]\nhost = "h"\nsender = "s@example.com"\nrecipients = []\n',
            "notify.smtp[1] in cfg.toml: SmtpNotifier needs at least one recipient",
        ),
        (
            '[[notify.smtp]]\nhost = "h"\nsender = "s@x.org"\nrecipients = ["a@x.org"]\n'
            'only = ["blokced"]\n',
            "notify.smtp[1].only in cfg.toml names 'blokced', which no status board",
        ),
        ("[[notify.webhook]]\ntimeout = 5\n", "notify.webhook[1] in cfg.toml needs url"),
        ("[[notify.pager]]\n", "notify.pager in cfg.toml is not a setting"),
    ],
)
def test_an_error_in_the_file_names_the_file_and_the_key(tmp_path, monkeypatch, toml, words):
    monkeypatch.chdir(tmp_path)
    url = a_store(tmp_path, "state", "a@example.com/INBOX")
    (tmp_path / "cfg.toml").write_text(toml)
    code, text = run("pause", "a@example.com/INBOX", "--store", url, "--config", "cfg.toml")
    assert code == 2
    assert text.startswith(f"mailtether: {words}"), text
    assert text.count("\n") == 1
    board = StatusBoard(SQLiteStore(tmp_path / "state.db"), notifiers=[])
    assert board.get("a@example.com/INBOX").state is SourceState.ONLINE, "nothing was paused"


# -- notifiers from the file ----------------------------------------------------------------------


def test_pause_and_resume_are_mailed_by_the_files_smtp_notifier(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = a_store(tmp_path, "state", "support@example.com/INBOX")
    scripted = Scripted()
    secret = "s3cret-relay-password"
    with smtp_server(scripted, password=secret) as port:
        (tmp_path / "mailtether.toml").write_text(
            f'store = "{url}"\n'
            "[[notify.smtp]]\n"
            f'host = "127.0.0.1"\nport = {port}\nsecurity = "plain"\n'
            'username = "bot"\npassword_env = "NOTIFY_PASSWORD"\n'
            'sender = "mailtether@example.com"\nrecipients = ["ops@example.com"]\n'
        )
        env = {"NOTIFY_PASSWORD": secret}
        code, text = run("pause", "support@example.com/INBOX", "--by", "alice", environ=env)
        assert (code, text) == (0, "support@example.com/INBOX: paused\n")
        code, text = run("resume", "support@example.com/INBOX", "--by", "bob", environ=env)
        assert (code, text) == (0, "support@example.com/INBOX: resumed\n")
    assert scripted.logins == [("bot", secret), ("bot", secret)]
    bodies = [raw.decode() for _, _, raw in scripted.received]
    assert len(bodies) == 2
    assert "support@example.com/INBOX is paused (was online): paused by alice" in bodies[0]
    assert "is retrying (was paused): resumed by bob; connecting" in bodies[1]


def test_password_env_that_is_not_set_is_an_error_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = a_store(tmp_path, "state", "a@example.com/INBOX")
    (tmp_path / "mailtether.toml").write_text(
        f'store = "{url}"\n[[notify.smtp]]\nhost = "h"\npassword_env = "NOTIFY_PASSWORD"\n'
        'sender = "s@example.com"\nrecipients = ["a@example.com"]\n'
    )
    code, text = run("pause", "a@example.com/INBOX")
    assert code == 2
    assert text == (
        "mailtether: notify.smtp[1].password_env in mailtether.toml names NOTIFY_PASSWORD, "
        "which is not set in the environment\n"
    )


def test_a_password_in_the_file_is_never_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mailtether.toml").write_text(
        '[[notify.smtp]]\nhost = "h"\npassword = "hunter2-in-the-file"\n'
        'sender = "s@example.com"\nrecipients = ["a@example.com"]\n'
        'timeout = "hunter2-in-the-file"\n'  # an error that would echo it
    )
    code, text = run("pause", "a@example.com/INBOX", "--store", "sqlite:nope.db")
    assert code == 2
    assert "timeout in mailtether.toml" in text
    assert "hunter2" not in text


def test_a_webhook_from_the_file_is_told_of_a_pause(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = a_store(tmp_path, "state", "support@example.com/INBOX")
    with WebhookReceiver() as receiver:
        (tmp_path / "mailtether.toml").write_text(
            f'store = "{url}"\n[status]\nquiet_period = "1h"\n'
            "[[notify.webhook]]\n"
            'url_env = "HOOK_URL"\ntimeout = "5s"\nonly = ["paused"]\n'
        )
        env = {"HOOK_URL": receiver.url("/hooks/ops")}
        assert run("pause", "support@example.com/INBOX", "--by", "alice", environ=env)[0] == 0
        assert run("resume", "support@example.com/INBOX", environ=env)[0] == 0
        told = receiver.wait_for(1)
    assert [(each["source"], each["state"]) for each in told] == [
        ("support@example.com/INBOX", "paused")
    ], "only= keeps the resume (retrying) out"


def test_status_shows_a_paused_source_with_who_and_when(tmp_path):
    url = a_store(tmp_path, "state", "support@example.com/INBOX")
    assert run("pause", "support@example.com/INBOX", "--store", url, "--by", "alice")[0] == 0
    code, text = run("status", "--store", url)
    assert code == 0
    row = next(line for line in text.splitlines() if line.startswith("support@"))
    assert "PAUSED" in row
    assert "paused by alice" in row
    assert "`mailtether resume SOURCE` lets it go on" in text
    assert run("pause", "support@example.com/INBOX", "--store", url) == (
        0,
        "support@example.com/INBOX: already paused\n",
    )
    assert run("pause", "nobody@example.com/INBOX", "--store", url) == (
        1,
        "nobody@example.com/INBOX: not found\n",
    )
    assert run("resume", "support@example.com/INBOX", "--store", url)[1].endswith("resumed\n")
    assert run("resume", "support@example.com/INBOX", "--store", url) == (
        1,
        "support@example.com/INBOX: not found, or neither blocked nor paused\n",
    )
