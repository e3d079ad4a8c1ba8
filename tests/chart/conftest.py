import pytest
from chart_helpers import install_tools


@pytest.fixture(scope="session")
def tools():
    """helm, kubectl, checkov (and prometheus) from scripts/install_k8s_tools.sh: the real binaries."""
    return install_tools()
