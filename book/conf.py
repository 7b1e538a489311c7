"""Sphinx settings of the course's book (myst-nb renders the executed notebooks; nothing runs).

`python book/build.py` stages the pages and runs Sphinx with this folder as its configuration;
it passes the run's commit and date (the footer) as `html_theme_options.extra_footer`.
"""

from sat_helpers.config import GITHUB_REPO

project = "Show, Attend and Tell — the course"
html_title = project
author = "the course's authors"
copyright = "the course's authors, MIT licence"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # the book shows what `make course` ran; it never runs a notebook
nb_ipywidgets_js = {}  # widgets are rendered as static HTML by build.py: no widget scripts (CDN)
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4
myst_heading_slug_func = "book.pages.jupyter_anchor"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# MathJax 2.7 from the pip package jupyter-server-mathjax, copied into _static/mathjax by
# build.py: the math is typeset without a network. MyST marks the page "tex2jax_ignore" (no
# stray $ is typeset) and each formula "math", as Sphinx's own MathJax 3 settings expect.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                "processEscapes": True, "processEnvironments": False,
                "processClass": "math|output_area",
                "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
    "HTML-CSS": {"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web",
                 "webFont": "STIX-Web", "imageFont": None},
    "showMathMenu": False,
    "messageStyle": "none",
}

html_theme = "sphinx_book_theme"
html_theme_options = {
    "repository_url": f"https://github.com/{GITHUB_REPO}",
    "use_repository_button": True,
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "extra_footer": "",
}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
