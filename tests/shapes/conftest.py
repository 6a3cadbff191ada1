"""The mini bundle, exported once per test session from the shipped trained weights
(`from_preset("mini")`, as `vitron-rt export --preset mini` does) and shared read-only by
the evaluation and demo tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mini_export(tmp_path_factory):
    """(bundle path, its PyTorch reference)."""
    from vitron_rt.export.pipeline import export_bundle
    from vitron_rt.models.source import from_preset

    ref = from_preset("mini")
    path, _rows = export_bundle(ref, tmp_path_factory.mktemp("bundles") / "mini")
    return path, ref


@pytest.fixture(scope="session")
def mini_bundle(mini_export):
    """Path of the mini bundle. Treat it as read-only: copy it before changing anything."""
    return mini_export[0]
