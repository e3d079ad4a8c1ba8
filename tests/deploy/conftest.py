import sys
from pathlib import Path

import pytest

# The chart's render helpers (tests/chart/chart_helpers.py): the container test runs what the chart renders.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))

from chart_helpers import install_tools  # noqa: E402


@pytest.fixture(scope="session")
def tools():
    """helm (and the other chart tools) from scripts/install_k8s_tools.sh: the real binaries."""
    return install_tools()
