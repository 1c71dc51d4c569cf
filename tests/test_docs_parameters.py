"""The keyword parameters the docs name exist: a renamed or misspelt one fails here.

What is checked, on README.md and docs/*.md (the changelog is history: old names belong there):

- every call in a ``python`` code block to a public name of ``mailtether`` or
  ``mailtether.testing`` — ``Outbox(store, relay, skip_after=3)``, a classmethod such as
  ``ImapSettings.from_url(url, ssl_context=...)``, and a method of a variable the page
  made from a public class (``outbox = Outbox(...)`` then ``outbox.send(..., relay=...)``);
- the same in inline code: ```ImapListener(url, handler, on_poison="flag")```;
- an inline ```name=``` (or ```name=value```) in prose just after a public name, with only
  punctuation or the words "takes", "accepts", "with", "and", "or" between:
  "`SmtpRelay` takes `security="tls"`", "{class}`~mailtether.ImapSettings` (with
  `auth="xoauth2"`" (a keyword span following another such one belongs to the same name).
  Other keywords in prose ("`heartbeat=` on the listener", "an `Outbox`, then removed as
  `after=` says") are not checked: whose they are is not clear.

Each keyword must be accepted by the callable's signature (``inspect.signature``; a
``**kwargs`` accepts anything). A method call on a value the page did not make from a public
class in its code (``connection.wait(30, stop=...)`` on a connection from elsewhere) is not
checked: its type is not known without running the page.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeGuard

import attrs
import pytest

import mailtether
import mailtether.testing

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted(page for page in (ROOT / "docs").glob("*.md") if page.name != "changelog.md"),
]

_MODULES = frozenset({"mailtether", "mailtether.testing"})
PUBLIC: dict[str, object] = {
    name: getattr(module, name)
    for module in (mailtether.testing, mailtether)  # mailtether's own win a clash
    for name in module.__all__
}

_FENCE = re.compile(r"^(`{3,}|~{3,})([^\n]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_KEYWORD_SPAN = re.compile(r"([A-Za-z_]\w*)=(?!=)")
# A public name as prose mentions it: `Name`, `Name(...)`, {class}`~mailtether.Name`,
# `mailtether.Name`. A dotted name (`Name.method`) names the method.
_MENTION = re.compile(
    r"^~?(?:mailtether\.(?:testing\.)?)?([A-Za-z_][\w.]*?)(?:\(.*\))?$", re.DOTALL
)
_JOINED = re.compile(r"[\s,;:(]*(?:(?:takes|accepts|with|and|or)\b[\s,;:(]*)*")
"""What may stand between a public name and a keyword span that belongs to it."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z({`*])|\n\s*\n")


@attrs.frozen
class Use:
    """One keyword the docs pass to a public callable."""

    where: str
    callable_name: str
    keyword: str

    def __str__(self) -> str:
        return f"{self.where}: {self.callable_name}(..., {self.keyword}=...)"


def _resolve(dotted: str) -> Callable[..., object] | None:
    """The public callable *dotted* names (``Outbox``, ``ImapSettings.from_url``), or ``None``."""
    head, _, rest = dotted.partition(".")
    target = PUBLIC.get(head)
    for part in rest.split(".") if rest else ():
        target = getattr(target, part, None)
    return target if callable(target) else None


def _accepts(target: Callable[..., object], keyword: str) -> bool:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # no signature to read: nothing to check against
        return True
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if parameter.name == keyword and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            return True
    return False


# -- code ------------------------------------------------------------------------------------------


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


@attrs.define
class _Names:
    """What the names of one page's code stand for: public names, and values made from them."""

    imported: dict[str, str] = attrs.field(factory=dict)  # local name -> public name
    bound: set[str] = attrs.field(factory=set)  # names the page binds to something else
    made: dict[str, set[str]] = attrs.field(factory=dict)  # variable -> classes it was made from

    def learn(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in _MODULES:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    self.bound.add((alias.asname or alias.name).partition(".")[0])
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.bound.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.bound.add(node.id)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    made = (
                        self.public(node.value.func) if isinstance(node.value, ast.Call) else None
                    )
                    is_class = made is not None and inspect.isclass(_resolve(made))
                    self.made.setdefault(target.id, set()).add(made if is_class else "")

    def public(self, func: ast.expr) -> str | None:
        """The public dotted name a call's function is, if it is one."""
        dotted = _dotted(func)
        if dotted is None:
            return None
        for prefix in ("mailtether.testing.", "mailtether."):
            if dotted.startswith(prefix) and dotted.split(".")[0] not in self.bound:
                dotted = dotted[len(prefix) :]
                return dotted if _resolve(dotted) is not None else None
        head, dot, rest = dotted.partition(".")
        if head in self.imported:
            name = self.imported[head] + dot + rest
        elif head in PUBLIC and head not in self.bound:
            name = dotted
        elif dot and len(self.made.get(head, ())) == 1 and "" not in self.made[head]:
            [cls] = self.made[head]
            name = f"{cls}.{rest}"
        else:
            return None
        return name if _resolve(name) is not None else None


def _calls(tree: ast.AST, names: _Names) -> Iterator[tuple[int, str, str]]:
    """(line, public callable, keyword) for each keyword of each call to a public callable."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := names.public(node.func)) is not None:
            for keyword in node.keywords:
                if keyword.arg is not None:
                    yield node.lineno, name, keyword.arg


def _parse(code: str) -> ast.AST | None:
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


# -- prose -----------------------------------------------------------------------------------------


def _mentioned(span: str, role: str) -> str | None:
    """The public callable an inline span names (`Outbox`, {meth}`~mailtether.Outbox.send`)."""
    match = _MENTION.match(span.strip())
    if match is None or (role and role not in ("class", "func", "meth", "exc")):
        return None
    name = match[1]
    return name if name.partition(".")[0] in PUBLIC and _resolve(name) is not None else None


def _prose_uses(prose: str, names: _Names, where: str) -> Iterator[Use]:
    """Calls in inline code, and ``name=`` spans just after a public name (see the module)."""
    for sentence in _SENTENCE_END.split(prose):
        owner: str | None = None  # the public callable a keyword span right after belongs to
        owner_end = 0
        for match in _INLINE.finditer(sentence):
            span = match[2].strip().replace("…", "...")
            role = re.search(r"\{(\w+)\}$", sentence[: match.start()])
            tree = _parse(span) if "(" in span and not role else None
            if tree is not None and _is_call(tree):
                for _, name, keyword_name in _calls(tree, names):
                    yield Use(where, name, keyword_name)
                owner, owner_end = names.public(tree.body[0].value.func), match.end()
                continue
            keyword = _KEYWORD_SPAN.match(span)
            if keyword is not None and (keyword.end() == len(span) or _parse(span) is not None):
                if owner is not None and _JOINED.fullmatch(sentence, owner_end, match.start()):
                    yield Use(f"{where} (prose)", owner, keyword[1])
                    owner_end = match.end()  # `A` takes `b=1`, `c=2`: both A's
                continue
            owner, owner_end = _mentioned(span, role[1] if role else ""), match.end()


def _is_call(tree: ast.AST) -> TypeGuard[ast.Module]:
    return (
        isinstance(tree, ast.Module)
        and len(tree.body) == 1
        and isinstance(tree.body[0], ast.Expr)
        and isinstance(tree.body[0].value, ast.Call)
    )


# -- a page ----------------------------------------------------------------------------------------


def uses(text: str, where: str) -> list[Use]:
    """Every keyword *text* (a Markdown page) passes to a public mailtether callable."""
    names = _Names()
    blocks: list[tuple[int, ast.AST]] = []
    prose_parts: list[str] = []
    last = 0
    for fence in _FENCE.finditer(text):
        prose_parts.append(text[last : fence.start()])
        last = fence.end()
        language = fence[2].strip().lower()
        if language in ("python", "py", "pycon", "python3"):
            tree = _parse(fence[3])
            if tree is not None:
                names.learn(tree)
                blocks.append((text.count("\n", 0, fence.start()) + 1, tree))
    prose_parts.append(text[last:])
    found: list[Use] = []
    for start, tree in blocks:
        found.extend(
            Use(f"{where}:{start + line}", name, keyword)
            for line, name, keyword in _calls(tree, names)
        )
    for prose in prose_parts:
        found.extend(_prose_uses(_without_comments(prose), names, where))
    return found


def _without_comments(prose: str) -> str:
    return re.sub(r"<!--.*?-->", "", prose, flags=re.DOTALL)


def unknown(found: list[Use]) -> list[str]:
    """The uses whose callable does not take that keyword."""
    wrong = []
    for use in found:
        target = _resolve(use.callable_name)
        if target is not None and not _accepts(target, use.keyword):
            wrong.append(str(use))
    return wrong


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_keyword_the_page_names_exists(page: Path) -> None:
    found = uses(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    assert unknown(found) == []


def test_the_docs_name_keywords_at_all() -> None:
    """The finder sees the docs' calls (a finder that finds nothing would pass every page)."""
    everything = [
        use
        for page in PAGES
        for use in uses(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    ]
    named = {(use.callable_name, use.keyword) for use in everything}
    assert ("ImapListener", "on_poison") in named
    assert ("Outbox", "skip_after") in named
    assert ("ImapSettings.from_url", "ssl_context") in named
    assert len(everything) > 100


SAMPLE = """\
# A page with mistakes

```python
from mailtether import MemoryStore, Outbox, SmtpRelay
from mailtether.testing import FakeClock

outbox = Outbox(MemoryStore(), SmtpRelay("smtp.example.com"), skip_afterr=3, clock=FakeClock())
outbox.send(b"...", relays="backup")
```

Then `ImapListener(url, handler, on_poision="flag")`. A {class}`~mailtether.Keepalive` takes
`noop_intervall=0`. Not checked, as no public name comes just before: `heartbeat_every=` on
the listener, and the {class}`~mailtether.StatusBoard` that keeps every source's state in the
store and says, with `alive_untill=`, until when it is alive; a mail sent through an
{class}`~mailtether.Outbox`, then removed as `afterwards=` says.

And the right ones: `Outbox(store, relay, skip_after=3)`. A
{class}`~mailtether.DuplicateGuard` takes `max_failures=3`.
"""


def test_a_made_up_keyword_is_caught() -> None:
    assert unknown(uses(SAMPLE, "sample.md")) == [
        "sample.md:7: Outbox(..., skip_afterr=...)",
        "sample.md:8: Outbox.send(..., relays=...)",
        "sample.md: ImapListener(..., on_poision=...)",
        "sample.md (prose): Keepalive(..., noop_intervall=...)",
    ]


def test_right_keywords_pass_and_a_keyword_far_from_a_name_is_not_checked() -> None:
    found = {(use.callable_name, use.keyword) for use in uses(SAMPLE, "sample.md")}
    assert {("Outbox", "clock"), ("Outbox", "skip_after"), ("DuplicateGuard", "max_failures")} <= (
        found
    )
    assert not {"heartbeat_every", "alive_untill", "afterwards"} & {keyword for _, keyword in found}
