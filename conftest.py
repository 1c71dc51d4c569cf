"""Runs the code in README.md, docs/*.md and the docstrings of src/ as tests (Sybil)."""

from doctest import ELLIPSIS

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

_markdown = Sybil(
    parsers=[DocTestParser(optionflags=ELLIPSIS), PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    excludes=["docs/_build/*"],
)
_docstrings = Sybil(
    parsers=[DocTestParser(optionflags=ELLIPSIS)], patterns=["*.py"], path="src/mailtether"
)

pytest_collect_file = (_markdown + _docstrings).pytest()
