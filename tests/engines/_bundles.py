"""Fixtures of the engine tests, imported by the test modules that use them (a conftest.py
here would shadow tests/conftest.py, which other test folders import by name). The tiny
bundle itself comes from tests/conftest.py (exported once per session, shared read-only);
tests that write into a bundle's engines/ take `bundle_copy`. Imported under their
function names (`tiny_fixture`), so the test parameters (`tiny`) shadow nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vitron_rt.bundle import Bundle, load_bundle


@pytest.fixture(scope="session", name="tiny")
def tiny_fixture(tiny_bundle: Path) -> Bundle:
    """The shared tiny bundle, loaded once (hashes verified once)."""
    return load_bundle(tiny_bundle)


@pytest.fixture(name="bundle_copy")
def bundle_copy_fixture(tiny_bundle: Path, tmp_path: Path) -> Bundle:
    """A private copy of the tiny bundle, for tests that write engines/ or alter files."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst, ignore=shutil.ignore_patterns("engines"))
    return load_bundle(dst, verify=False)
