"""Sphinx configuration for mailtether's documentation."""

from importlib.metadata import version as _version

project = "mailtether"
author = "The mailtether developers"
copyright = "2026, The mailtether developers"
release = _version("mailtether")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No intersphinx: the docs build runs offline (CI has no network), and must not warn.

html_theme = "furo"
html_title = "mailtether"
