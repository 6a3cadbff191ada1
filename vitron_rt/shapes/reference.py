"""The PyTorch side of the accuracy table: the runtime's session with every engine call
answered by the bundle's reference module instead of its ONNX file.

    Session (ONNX Runtime)        ReferenceSession (PyTorch)
    ─────────────────────         ──────────────────────────
    preprocess, chat template, splice, sampling, hybrid-message parsing, DDIM loop,
    mask upsampling, compositing: the runtime's own code on both sides
    OrtRunner(<name>.onnx)        TorchRunner(reference.components[<name>]) under no_grad,
                                  called as the export spec calls it (`ExportSpec.run`)

So the two columns differ only where the exported graphs and their engine differ from the
modules they were exported from, which is what ORT-vs-PyTorch agreement should measure;
the reference is rebuilt from the bundle's own manifest source (`from_source`), so it is
the weights the bundle was exported from. The runtime runs any `Runner` (a non-ORT runner
gets the host KV cache), so no runtime code knows about torch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from vitron_rt.bundle import Bundle, TensorSpec
from vitron_rt.engines import Runner
from vitron_rt.export import specs as _specs  # noqa: F401  (registers every component spec)
from vitron_rt.export.spec import ExportSpec, get_spec
from vitron_rt.models.source import Reference
from vitron_rt.runtime.session import Session


class TorchRunner(Runner):
    """A bundle component's reference module behind the runner lifecycle: numpy feeds by
    the manifest's input names in, numpy outputs by its output names out."""

    engine = "torch"

    def __init__(self, bundle: Bundle, component: str, module: nn.Module):
        super().__init__(bundle.component_path(component), entry=bundle.component(component), name=component)
        self.module = module
        self.spec: ExportSpec | None = None

    def _activate_impl(self) -> None:
        self.module.eval()
        self.spec = get_spec(self.name).bind(self.module)

    def _io_specs_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return self.entry.inputs, self.entry.outputs

    def _infer_impl(self, feeds: dict[str, np.ndarray], dims: dict[str, int]) -> dict[str, np.ndarray]:
        inputs = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in feeds.items()}
        with torch.no_grad():
            outputs = self.spec.run(self.module, inputs)
        return {io.name: t.detach().numpy() for io, t in zip(self.spec.outputs, outputs)}

    def _deactivate_impl(self) -> None:
        self.spec = None


class ReferenceSession(Session):
    """A `Session` over `bundle_path` whose components run as `TorchRunner`s on
    `reference` (see the module docstring). The decoder runs its standard graph's
    signature with a host KV cache: the shared-buffer variant is an ONNX Runtime graph.

    `threads`: torch's intra-op threads (process-wide). One by default: the reference's
    small per-token ops gain nothing from a second thread, and on a busy 2-core machine
    its spinning workers made a 96-token reply take 5-30 s instead of 1 s (measured)."""

    def __init__(self, bundle_path: str | os.PathLike, reference: Reference, threads: int = 1, **kwargs: Any):
        torch.set_num_threads(threads)
        self.reference = reference
        super().__init__(bundle_path, shared_kv=False, **kwargs)

    def runner(self, component: str) -> Runner:
        runner = self._runners.get(component)
        if runner is None:
            module = self.reference.components.get(component)
            if module is None:
                raise KeyError(f"the reference model has no component {component!r}")
            runner = TorchRunner(self.bundle, component, module)
            runner.activate()
            self._runners[component] = runner
        return runner
