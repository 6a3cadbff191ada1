"""VitronModel: every reference component of one preset or checkpoint, under their
manifest names.

Components that share weights in the real system share them here too: `embed_tokens`
is the LLM's input embedding, the two segmentation halves are one SamModel split into
encode-once / decode-many, and the VAE halves are one AutoencoderKL.

    vision_encoder ─► mm_projector ─┐   region_encoder
                                    ▼
    embed_tokens ─► llm_decoder ─► signal_projector.<module> ─► seg_* / unet + vae_*
"""

from __future__ import annotations

import contextlib
import zlib

import torch
from torch import nn

from vitron_rt.models.config import SIGNAL_MODULES, VitronConfig
from vitron_rt.models.diffusion import UNet, VaeDecoder, VaeEncoder, build_vae
from vitron_rt.models.llm import EmbedTokens, LlmDecoder
from vitron_rt.models.projector import MMProjector
from vitron_rt.models.region import RegionEncoder
from vitron_rt.models.segmentation import SegImageEncoder, SegMaskDecoder, build_sam
from vitron_rt.models.signal import SignalProjectors
from vitron_rt.models.vision import VisionEncoder

# Manifest names, in data-flow order. `signal_projector.<module>` expands per module.
COMPONENT_NAMES: tuple[str, ...] = (
    "vision_encoder",
    "mm_projector",
    "region_encoder",
    "embed_tokens",
    "llm_decoder",
    *(f"signal_projector.{m}" for m in SIGNAL_MODULES),
    "seg_image_encoder",
    "seg_mask_decoder",
    "unet",
    "vae_encoder",
    "vae_decoder",
)


@contextlib.contextmanager
def _seeded(seed: int, part: str):
    """Seed torch per part, so each part's random weights do not depend on build order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(part.encode()))
        yield


class VitronModel(nn.Module):
    """All components of one config. Build with `VitronModel.from_config` (random weights,
    seeded) or through `vitron_rt.models.checkpoint` (real weights)."""

    def __init__(
        self,
        config: VitronConfig,
        llm: LlmDecoder,
        vision_encoder: VisionEncoder,
        mm_projector: MMProjector,
        region_encoder: RegionEncoder,
        signal_projectors: SignalProjectors,
        sam: nn.Module,
        unet: UNet,
        vae: nn.Module,
    ):
        super().__init__()
        self.config = config
        self.llm_decoder = llm
        self.embed_tokens = EmbedTokens(llm.input_embeddings())
        self.vision_encoder = vision_encoder
        self.mm_projector = mm_projector
        self.region_encoder = region_encoder
        self.signal_projectors = signal_projectors
        self.seg_image_encoder = SegImageEncoder(sam)
        self.seg_mask_decoder = SegMaskDecoder(sam)
        self.unet = unet
        self.vae_encoder = VaeEncoder(vae)
        self.vae_decoder = VaeDecoder(vae)

    @classmethod
    def from_config(cls, config: VitronConfig, device: str | torch.device = "cpu") -> "VitronModel":
        """Seeded random weights for every component. `device="meta"` builds shapes only
        (no memory), which is how the tests look at the vitron-7b preset."""
        seed = config.seed
        with torch.device(device):
            with _seeded(seed, "llm"):
                llm = LlmDecoder.from_config(config.llm)
            with _seeded(seed, "vision"):
                vision = VisionEncoder(config.vision)
            with _seeded(seed, "projector"):
                projector = MMProjector(config.projector)
            with _seeded(seed, "region"):
                region = RegionEncoder(config.region)
            with _seeded(seed, "signal"):
                signal = SignalProjectors(config.signal)
            with _seeded(seed, "sam"):
                sam = build_sam(config.seg)
            with _seeded(seed, "unet"):
                unet = UNet(config.unet)
            with _seeded(seed, "vae"):
                vae = build_vae(config.vae)
        model = cls(config, llm, vision, projector, region, signal, sam, unet, vae)
        return model.eval()

    def component(self, name: str) -> nn.Module:
        """The component under its manifest name (see COMPONENT_NAMES)."""
        if name.startswith("signal_projector."):
            module = name.split(".", 1)[1]
            if module in self.signal_projectors.projectors:
                return self.signal_projectors.projectors[module]
        elif name in COMPONENT_NAMES:
            return getattr(self, name)
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENT_NAMES)}")

    def components(self) -> dict[str, nn.Module]:
        return {name: self.component(name) for name in COMPONENT_NAMES}
