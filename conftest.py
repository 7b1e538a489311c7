"""nbval runs every notebook: a cell that prints a warning to stderr fails, as if it raised."""

import pytest

from sat_helpers.course import warnings_in


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After a notebook cell ran under nbval, fail it if its stderr holds a warning."""
    result = yield
    warned = warnings_in(getattr(item, "test_outputs", None) or [])
    if warned:
        pytest.fail(f"{item.name} printed a warning; fix its cause:\n" + "".join(warned),
                    pytrace=False)
    return result
