"""pytest set-up shared by tests/ and notebooks/: how `make test` splits work over processes."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One pytest-xdist group per test file, and one for all notebooks (run in order:
    05-07 reuse the model notebook 04 trains, so two of them must never run at once)."""
    for item in items:
        group = "notebooks" if item.path.suffix == ".ipynb" else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))
