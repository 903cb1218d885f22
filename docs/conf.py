# Sphinx configuration of the documentation site. `make docs` (scripts/build_docs.py) stages the
# notebooks of nbs/ and generated API pages into a git-ignored folder and runs Sphinx on it with
# this folder as the configuration directory (-c docs). The notebooks are rendered with the
# outputs they were committed with: nothing is executed at build time.
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, also when it is not installed

project = "tradingrl_nb"
author = "tradingrl_nb developers"
copyright = "tradingrl_nb developers"
try:
    from tradingrl_nb import __version__ as release
except Exception:  # the build script imports every module first and reports a broken import itself
    release = ""
version = release

extensions = [
    "myst_nb",  # notebooks and MyST markdown
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# notebooks: render stored outputs, never execute
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove-warn"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# API reference
autosummary_generate = False  # the build script writes one page per module
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
add_module_names = False

exclude_patterns = ["_build", ".doctrees", "**.ipynb_checkpoints", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

html_theme = "pydata_sphinx_theme"
html_title = "tradingrl_nb"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # the findings page gives its wide table the width of the right sidebar (it has one section to list)
    "secondary_sidebar_items": {"**": ["page-toc"], "claims": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_static_path = [str(ROOT / "docs" / "_static")]  # tables.css: wide tables scroll inside the page
# MathJax is bundled with the site (the `sphinx-mathjax-offline` package of the dev extra carries
# MathJax 3): its files are copied to _static/mathjax, so formulas typeset with no network.
# TRADINGRL_DOCS_MATHJAX=<url> loads MathJax from elsewhere (e.g. a CDN) instead.
import importlib.util as _ilu

_mathjax = _ilu.find_spec("sphinx-mathjax-offline")
if os.environ.get("TRADINGRL_DOCS_MATHJAX"):
    mathjax_path = os.environ["TRADINGRL_DOCS_MATHJAX"]
elif _mathjax is not None:
    html_static_path = [*globals().get("html_static_path", []), str(Path(_mathjax.origin).parent / "static")]
    mathjax_path = "mathjax/tex-chtml.js"
else:
    raise RuntimeError("the docs need the sphinx-mathjax-offline package (pip install -e '.[dev]') "
                       "or TRADINGRL_DOCS_MATHJAX=<url of MathJax 3>")


# A docstring that is not valid reStructuredText (e.g. `**kwargs` in a docstring inherited from `dict`) leaves a
# "problematic" node that links to its error message; Sphinx prints the message but does not put it on the page, so
# the link would be a dead in-page anchor (`#id1`). Such nodes keep their text and lose the link.
def _unlink_problematic(app, doctree, docname):
    from docutils import nodes
    shown = {i for n in doctree.findall(nodes.Element) if not isinstance(n, nodes.system_message) for i in n["ids"]}
    for node in doctree.findall(nodes.problematic):
        if "refid" in node and node["refid"] not in shown:
            del node["refid"]


def setup(app):
    app.connect("doctree-resolved", _unlink_problematic)
    app.add_css_file("tables.css")
