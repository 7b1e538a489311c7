"""nbval runs every notebook: a cell that prints a warning to stderr fails, as if it raised."""

import re

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After a notebook cell ran under nbval, fail it if its stderr holds a warning."""
    result = yield
    warned = [out["text"] for out in getattr(item, "test_outputs", None) or []
              if out.get("output_type") == "stream" and out.get("name") == "stderr"
              and re.search(r"warning", out.get("text", ""), re.I)]
    if warned:
        pytest.fail(f"{item.name} printed a warning; fix its cause:\n" + "".join(warned),
                    pytrace=False)
    return result
