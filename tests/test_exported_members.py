"""The public surface is exactly what __all__ lists, and everything in it is documented."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import mailtether
import mailtether.testing


@pytest.mark.parametrize("module", [mailtether, mailtether.testing])
def test_all_is_exactly_the_public_names(module):
    public = {name for name in vars(module) if not name.startswith("_")}
    submodules = {name for name in public if inspect.ismodule(getattr(module, name))}
    assert set(module.__all__) == public - submodules - {"annotations"}
    assert sorted(module.__all__) == sorted(set(module.__all__)), "no duplicates"


@pytest.mark.parametrize("module", [mailtether, mailtether.testing])
def test_every_public_name_has_a_docstring(module):
    undocumented = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            if not (value.__doc__ or "").strip():
                undocumented.append(name)
            for attr, member in vars(value).items() if inspect.isclass(value) else ():
                if attr.startswith("_") or not callable(member):
                    continue
                if not (getattr(member, "__doc__", "") or "").strip():
                    undocumented.append(f"{name}.{attr}")
    assert undocumented == []


def _all_modules():
    for info in pkgutil.walk_packages(mailtether.__path__, "mailtether."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            yield info.name


def test_private_modules_declare_all():
    modules = [importlib.import_module(name) for name in _all_modules()]
    assert [module.__name__ for module in modules if not hasattr(module, "__all__")] == []


def test_subpackages_export_nothing_of_their_own():
    # The public names live in mailtether and mailtether.testing only.
    for name in ("mailtether.stores", "mailtether.imap", "mailtether.pop3", "mailtether.cli"):
        assert importlib.import_module(name).__all__ == [], name


def test_import_pulls_in_no_optional_dependency():
    code = (
        "import sys, mailtether, mailtether.testing;"
        "bad = [m for m in ('redis', 'psycopg', 'pymap', 'hypothesis', 'tenacity', 'pytest',"
        " 'prometheus_client')"
        " if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
