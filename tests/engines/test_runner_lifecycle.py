"""The runner lifecycle and the input checks every engine shares (engines/base.py), on a
pure-Python runner and on the ONNX Runtime runner over the tiny bundle."""

from __future__ import annotations

import numpy as np
import pytest
from _bundles import tiny_fixture  # noqa: F401  (fixtures)

from vitron_rt.bundle import ComponentEntry, FileRef, TensorSpec
from vitron_rt.engines import (
    EngineError,
    InputError,
    NotActiveError,
    OrtOptions,
    OrtRunner,
    Runner,
    make_runner,
)


def _entry(inputs, outputs) -> ComponentEntry:
    return ComponentEntry(
        file=FileRef("x.onnx", "0" * 64, 1),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        opset=18,
        exporter="dynamo",
        exporter_reason="",
    )


ENTRY = _entry(
    [TensorSpec("x", "float32", ("batch", "seq", 4)), TensorSpec("mask", "int64", ("batch", "seq"))],
    [TensorSpec("y", "float32", ("batch", "seq", 4))],
)


class Doubler(Runner):
    """y = 2x; records which hooks ran, and can fail its activation on request."""

    engine = "fake"

    def __init__(self, *args, fail_activate: bool = False, io_names=("x", "mask"), **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[str] = []
        self.fail_activate = fail_activate
        self.io_names = io_names

    def _activate_impl(self):
        self.events.append("activate")
        if self.fail_activate:
            raise RuntimeError("disk on fire")

    def _io_specs_impl(self):
        return tuple(TensorSpec(n, "float32", ()) for n in self.io_names), (TensorSpec("y", "float32", ()),)

    def _infer_impl(self, feeds, dims):
        self.events.append(f"infer {dims}")
        return {"y": 2 * feeds["x"]}

    def _deactivate_impl(self):
        self.events.append("deactivate")


def feeds(batch=2, seq=3):
    return {"x": np.ones((batch, seq, 4), np.float32), "mask": np.ones((batch, seq), np.int64)}


def test_constructor_does_nothing_and_infer_needs_activate():
    r = Doubler("/nonexistent/model.onnx", entry=ENTRY)
    assert r.events == [] and not r.is_active and r.name == "model"
    with pytest.raises(NotActiveError, match=r"model: infer\(\) before activate\(\)"):
        r.infer(feeds())


def test_lifecycle_and_timing():
    r = Doubler("m.onnx", entry=ENTRY)
    r.activate()
    out = r.infer(feeds())
    np.testing.assert_array_equal(out["y"], 2 * feeds()["x"])
    r.infer(feeds(batch=1, seq=5))
    assert r.timing.calls == 2 and r.timing.total_ms >= r.timing.last_ms > 0
    assert r.events[1] == "infer {'batch': 2, 'seq': 3}"
    with pytest.raises(EngineError, match="already active"):
        r.activate()
    r.deactivate()
    r.deactivate()  # a no-op the second time
    assert r.events.count("deactivate") == 1
    with pytest.raises(NotActiveError):
        r.infer(feeds())


def test_context_manager_activates_and_always_deactivates():
    r = Doubler("m.onnx", entry=ENTRY)
    with pytest.raises(ValueError, match="boom"):
        with r as active:
            assert active is r and r.is_active
            raise ValueError("boom")
    assert not r.is_active and r.events == ["activate", "deactivate"]


def test_failed_activation_releases_and_stays_inactive():
    r = Doubler("m.onnx", entry=ENTRY, fail_activate=True)
    with pytest.raises(RuntimeError, match="disk on fire"):
        r.activate()
    assert not r.is_active and r.events == ["activate", "deactivate"]


def test_file_whose_tensors_differ_from_the_manifest_is_refused():
    r = Doubler("m.onnx", entry=ENTRY, io_names=("x", "attention_mask"))
    with pytest.raises(EngineError, match=r"m.onnx has inputs \['attention_mask', 'x'\], the manifest declares"):
        r.activate()
    assert not r.is_active


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.update(z=f["x"]), "unknown input 'z'; the inputs are x, mask"),
        (lambda f: f.pop("mask"), "missing input 'mask'"),
        (lambda f: f.update(x=f["x"].astype(np.float64)), "input 'x' is float64, expected float32"),
        (lambda f: f.update(mask=f["mask"].astype(np.int32)), "input 'mask' is int32, expected int64"),
        (lambda f: f.update(x=f["x"][0]), r"input 'x' has rank 2 \[3, 4\], expected rank 3"),
        (lambda f: f.update(x=np.ones((2, 3, 5), np.float32)), "input 'x' axis 2 is 5, expected 4"),
        (
            lambda f: f.update(mask=np.ones((2, 4), np.int64)),
            r"input 'mask' axis 1 \('seq'\) is 4, but 'x' gives 'seq' = 3",
        ),
        (lambda f: f.update(x=[[1.0]]), "input 'x' is a list, expected a numpy array"),
    ],
)
def test_bad_feeds_are_one_clear_line(change, message):
    f = feeds()
    change(f)
    with Doubler("m.onnx", entry=ENTRY) as r:
        with pytest.raises(InputError, match=message) as info:
            r.infer(f)
    assert "\n" not in str(info.value) and str(info.value).startswith("m: ")


def test_an_abstract_hook_left_out_cannot_be_instantiated():
    class Half(Runner):
        def _activate_impl(self): ...

    with pytest.raises(TypeError, match="abstract"):
        Half("m.onnx")


# --------------------------------------------------------------------------- on a real engine


def test_ort_runner_lifecycle_on_a_bundle_component(tiny):
    runner = make_runner(tiny, "mm_projector", options=OrtOptions(cache_optimized=False))
    assert runner.session is None  # constructing it created nothing
    x = np.random.default_rng(0).standard_normal((2, 5, 32), dtype=np.float32)
    with runner:
        out = runner.infer({"image_features": x})
        assert out["image_embeds"].shape == (2, 5, 64)
        with pytest.raises(InputError, match="mm_projector: input 'image_features' axis 2 is 31, expected 32"):
            runner.infer({"image_features": x[..., :31].copy()})
        with pytest.raises(InputError, match="mm_projector: unknown input 'features'"):
            runner.infer({"features": x})
    assert runner.session is None
    with pytest.raises(NotActiveError):
        runner.infer({"image_features": x})


def test_runner_from_a_path_alone_reads_its_specs_from_the_session(tiny):
    """How validate_file builds runners: `with runner(path) as session: session.infer(feeds)`."""
    runner = OrtRunner(tiny.component_path("llm_decoder"))
    with pytest.raises(NotActiveError, match="activate"):
        runner.input_specs
    with runner as session:
        specs = {t.name: t for t in session.input_specs}
        assert specs["attention_mask"] == TensorSpec("attention_mask", "int64", ("batch", "total_sequence"))
        with pytest.raises(InputError, match="missing input 'attention_mask'"):
            session.infer({"inputs_embeds": np.zeros((1, 1, 64), np.float32)})
