"""Spec of the signal projectors: one component per module that drives a back end."""

from __future__ import annotations

from vitron_rt.export.spec import IO, ExportSpec, register_spec
from vitron_rt.models.config import SIGNAL_MODULES


@register_spec(*(f"signal_projector.{m}" for m in SIGNAL_MODULES))
class SignalProjectorSpec(ExportSpec):
    """(B, K, D) signal-token hidden states -> (B, K, C) back-end conditioning. K is
    dynamic: the runtime feeds however many signal tokens the model emitted."""

    inputs = (IO("signal_hidden", {0: "batch", 1: "signal_tokens"}),)
    outputs = (IO("signal_embeds", {0: "batch", 1: "signal_tokens"}),)
    export_shapes = {"batch": 2, "signal_tokens": 4}
    validate_shapes = ({"batch": 1, "signal_tokens": 1}, {"batch": 3, "signal_tokens": 7})
    profiles = {"batch": (1, 1, 4), "signal_tokens": (1, 4, 64)}

    def sample_inputs(self, module, shape):
        feeds = module.dummy_inputs(batch=shape["batch"], tokens=shape["signal_tokens"], seed=shape["signal_tokens"])
        return {"signal_hidden": feeds["signal_hidden"]}

    def attributes(self, module):
        return {"module": self.qualifier, "out_dim": module.cfg.out_dim(self.qualifier)}
