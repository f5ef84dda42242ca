"""Sphinx configuration: Markdown pages (MyST), the API reference from the docstrings.

Build strictly (warnings are errors) with ``nox -s docs`` or
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import asyncpool

project = "asyncpool"
author = "asyncpool developers"
copyright = "asyncpool developers"
release = asyncpool.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: anchors for ## and ### headings, so pages can link to sections.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The docstrings are written for Sphinx: reST roles, Google-style "Args:" sections.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"asyncpool {release}"
html_static_path: list[str] = []
pygments_style = "friendly"
