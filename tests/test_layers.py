"""The architecture as a test: imports go one way, down the layers of docs/architecture.md."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mailtether

SRC = Path(mailtether.__file__).parent

# Lowest first. A module may import its own layer and those below, never one above.
LAYERS: dict[str, int] = {
    # base: time, errors, durations, the line reader
    "_clock": 0,
    "_errors": 0,
    "_durations": 0,
    "_lines": 0,
    "_network_errors": 0,
    "_step_deadlines": 0,
    "_sasl": 0,
    "_redaction": 0,
    "_url_errors": 0,
    "_yes_no": 0,
    # stores
    "stores": 1,
    # parts, each usable alone; and the test kit users get
    "_strategies": 2,
    "_config": 2,
    "_backoff": 2,
    "_keepalive": 2,
    "_leases": 2,
    "_message_key": 2,
    "_guard": 2,
    "_guard_states": 2,
    "_guard_views": 2,
    "_status": 2,
    "_heartbeat": 2,
    "_smtp_notifier": 2,
    "_status_mail": 2,
    "_pending": 2,
    "_write_behind": 2,
    "_state_filter": 2,
    "_webhook_notifier": 2,
    "_settings": 2,
    "_tokens": 2,
    "_smtp_relay": 2,
    "testing": 2,
    # the protocol-neutral pipeline and the run loop around it
    "_delivery": 3,
    "_mailbox_port": 3,
    "_handover": 3,
    "_pipeline": 3,
    "_runner": 3,
    "_outbox": 3,
    "_outbox_queue": 2,
    "_outbox_relay_pass": 3,
    "_outbox_notifier": 3,
    "_outbox_handoff": 3,
    "_review": 2,
    "_fleet_registry": 2,
    # sources: their connections, ports, listeners and probes; diagnostics across them
    "imap": 4,
    "pop3": 4,
    "smtp": 4,
    "_check": 4,
    # the fleet: many sources of every kind; the command line; the package's front door
    "_fleet": 5,
    "_fleet_worker": 5,
    "_metrics": 5,
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
}


def _part(module: str) -> str:
    """The LAYERS entry of a dotted module name inside mailtether."""
    return module.split(".")[1] if "." in module else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found.append((".".join(("mailtether", *parts)).removesuffix(".__init__"), path))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, but those under ``if TYPE_CHECKING:`` (type-only imports run nothing)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(module: str, path: Path) -> set[str]:
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve it
            base = module.split(".")[: -node.level if path.name != "__init__.py" else None]
            names.add(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("mailtether.") or name == "mailtether"}


def test_every_module_has_a_layer():
    assert sorted({_part(module) for module, _ in _modules()} - LAYERS.keys()) == []


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda value: str(value))
def test_imports_go_down_the_layers(module, path):
    own = LAYERS[_part(module)]
    upward = [
        name
        for name in _imports(module, path)
        if name != "mailtether" and LAYERS[_part(name)] > own
    ]
    assert upward == [], f"{module} (layer {own}) imports from above it"


def test_sources_do_not_import_each_other():
    for module, path in _modules():
        for other in ("imap", "pop3"):
            if _part(module) in ("imap", "pop3") and _part(module) != other:
                wrong = [n for n in _imports(module, path) if _part(n) == other]
                assert wrong == [], f"{module} imports the {other} source"


def test_the_whole_exception_tree_lives_in_errors():
    for name in mailtether.__all__:
        value = getattr(mailtether, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert value.__module__ == "mailtether._errors", name
