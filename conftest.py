"""Runs the code in README.md, docs/*.md and the docstrings of src/ as tests (Sybil)."""

from collections.abc import Iterator
from doctest import ELLIPSIS

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser
from sybil.sybil import SybilCollection

_PARSERS = [DocTestParser(optionflags=ELLIPSIS), PythonCodeBlockParser(), SkipParser()]
# Pages whose examples talk to local servers, and the fixtures (docs/conftest.py) that start them.
_PAGES_WITH_SERVERS = {
    "docs/listener.md": ["helpdesk"],
    "docs/oauth2.md": ["local"],
    "docs/outbound.md": ["smtp"],
    "docs/notifications.md": ["webhook", "mail_relay"],
}
_markdown = Sybil(
    parsers=_PARSERS,
    patterns=["README.md", "docs/*.md"],
    excludes=["docs/_build/*", *_PAGES_WITH_SERVERS],
)
_served = [
    Sybil(parsers=_PARSERS, patterns=[page], fixtures=fixtures)
    for page, fixtures in _PAGES_WITH_SERVERS.items()
]
_docstrings = Sybil(
    parsers=[DocTestParser(optionflags=ELLIPSIS)], patterns=["*.py"], path="src/mailtether"
)

pytest_collect_file = SybilCollection([_markdown, *_served, _docstrings]).pytest()


@pytest.fixture(autouse=True)
def _forget_the_tests_secrets() -> Iterator[None]:
    """The secrets each test or docs example gave are forgotten after it.

    The process remembers every secret it was given, for as long as it runs.

    Random passwords a property test draws would otherwise be redacted from the output of
    every later test ("INBOX" drawn once, "***" in every later message).
    """
    from mailtether._redaction import _SECRETS

    before = _SECRETS.snapshot()
    yield
    _SECRETS.restore(before)
