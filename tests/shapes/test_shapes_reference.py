"""The PyTorch side of the accuracy table: a runner over a reference module answers as the
module does (and as its ONNX file does, within tolerance), and a ReferenceSession runs
every component through such runners while the runtime's own code drives them."""

import numpy as np
import pytest

from vitron_rt.bundle import load_bundle
from vitron_rt.engines import make_runner
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import Session


@pytest.fixture(scope="module")
def tiny_reference(tiny_bundle):
    from vitron_rt.models.source import from_source

    return from_source(load_bundle(tiny_bundle).manifest.source)


def test_torch_runner_is_the_module_behind_the_manifest_names(tiny_bundle, tiny_reference):
    import torch

    from vitron_rt.shapes.reference import TorchRunner

    bundle = load_bundle(tiny_bundle)
    module = tiny_reference.components["mm_projector"]
    entry = bundle.component("mm_projector")
    features = np.random.default_rng(0).standard_normal((2, 5, entry.inputs[0].shape[-1])).astype(np.float32)
    feeds = {entry.inputs[0].name: features}
    with TorchRunner(bundle, "mm_projector", module) as runner, make_runner(bundle, "mm_projector") as ort:
        assert runner.engine == "torch" and runner.input_specs == entry.inputs
        got = runner.infer(feeds)[entry.outputs[0].name]
        onnx = ort.infer(feeds)[entry.outputs[0].name]
    with torch.no_grad():
        want = module(torch.from_numpy(features)).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, onnx, atol=1e-4)


def test_reference_session_runs_torch_under_the_runtime(tiny_bundle, tiny_reference):
    from vitron_rt.runtime.kv_cache import HostKvCache
    from vitron_rt.shapes.reference import ReferenceSession, TorchRunner

    params = SamplingParams(greedy=True, max_new_tokens=12)
    image = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with Session(tiny_bundle) as session, ReferenceSession(tiny_bundle, tiny_reference) as reference:
        theirs = reference.run("What is this?", image=image, sampling=params)
        ours = session.run("What is this?", image=image, sampling=params)
        assert reference.runners and all(isinstance(r, TorchRunner) for r in reference.runners.values())
        assert isinstance(reference.generator.new_cache(), HostKvCache)
        with pytest.raises(KeyError, match="no component"):
            type(reference)(tiny_bundle, type(tiny_reference)({}, tiny_reference.tokenizer, tiny_reference.config,
                                                              tiny_reference.source))  # fmt: skip
    assert theirs.usage == ours.usage and theirs.text == ours.text  # greedy fp32: token for token
