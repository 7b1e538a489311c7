"""Every runtime dependency has a lower bound, and `make test-lowest` runs at those bounds."""

import os
import re
from importlib.metadata import requires, version

import pytest
from packaging.version import Version

BOUND = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^;,\s]+)")


def runtime_requirements() -> list[str]:
    """The package's requirements, the optional `coco` extra included, not the dev tools."""
    return [r for r in requires("show-attend-tell-course")
            if "extra ==" not in r or 'extra == "coco"' in r]


def test_every_runtime_dependency_has_a_lower_bound():
    unbounded = [r for r in runtime_requirements() if not BOUND.match(r)]
    assert runtime_requirements() and not unbounded, \
        f"give these a tested lower bound (name>=version) in pyproject.toml: {unbounded}"


@pytest.mark.skipif(not os.environ.get("SAT_LOWEST"), reason="only in make test-lowest")
def test_the_lowest_environment_is_at_the_bounds():
    above = []
    for requirement in runtime_requirements():
        name, bound = BOUND.match(requirement).groups()
        if Version(version(name)) != Version(bound):
            above.append(f"{name} {version(name)} (bound {bound})")
    assert not above, f"not at the lower bound, so the bound is untested: {above}"
