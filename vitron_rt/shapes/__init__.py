"""ShapesWorld: a seeded synthetic world of coloured shapes, the data a mini Vitron trains on.

numpy and OpenCV only (no torch): scenes and videos (`world`), their drawing and ground
truth (`render`), a judge that reads shapes back from pixels (`judge`), instruction
samples in Vitron's hybrid-message form (`tasks`) and the tokenizer trained on their
text (`vocab`).
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
