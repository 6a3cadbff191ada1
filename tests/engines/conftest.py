"""Fixtures of the engine tests. The tiny bundle itself comes from tests/conftest.py
(exported once per session, shared read-only); tests that write into a bundle's
engines/ take `bundle_copy`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vitron_rt.bundle import Bundle, load_bundle


@pytest.fixture(scope="session")
def tiny(tiny_bundle: Path) -> Bundle:
    """The shared tiny bundle, loaded once (hashes verified once)."""
    return load_bundle(tiny_bundle)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Bundle:
    """A private copy of the tiny bundle, for tests that write engines/ or alter files."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst, ignore=shutil.ignore_patterns("engines"))
    return load_bundle(dst, verify=False)
