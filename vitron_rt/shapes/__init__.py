"""ShapesWorld: a seeded synthetic world of coloured shapes, the data a mini Vitron trains on.

numpy and OpenCV only (no torch): scenes and videos (`world`), their drawing and ground
truth (`render`), a judge that reads shapes back from pixels (`judge`), instruction
samples in Vitron's hybrid-message form (`tasks`) and the tokenizer trained on their
text (`vocab`).

The accuracy table of a model trained on it (`evaluate`: `vitron-rt eval-mini`) drives
the runtime and, beside it, the PyTorch reference (`reference`, which imports torch, so
this package does not import it); `metrics` holds its numbers (mask J and F, PSNR, edit
criteria) and `sheet` the demo's contact sheet.
"""

from vitron_rt.shapes.render import Render, VideoRender, render, render_video
from vitron_rt.shapes.scene import Scene, Shape
from vitron_rt.shapes.world import ShapeSpec, ShapesWorld, WorldConfig, WorldError

__all__ = [
    "Render",
    "Scene",
    "Shape",
    "ShapeSpec",
    "ShapesWorld",
    "VideoRender",
    "WorldConfig",
    "WorldError",
    "render",
    "render_video",
]
