# DEV ONLY - remove
import pytest
from pathlib import Path
@pytest.fixture(scope="session")
def tiny_bundle():
    return Path("/tmp/gen_tiny")
@pytest.fixture(scope="session")
def smollm2_bundle():
    return Path("/tmp/gen_smol")
