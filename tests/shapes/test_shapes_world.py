"""ShapesWorld: scenes and videos are pure functions of (seed, index), keep the promises
the questions rely on (distinct colour-kind pairs, visible shapes, unambiguous places,
shapes inside the frame), and render pixels that agree with their masks."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from vitron_rt.shapes import Scene, Shape, ShapeSpec, ShapesWorld, WorldConfig, WorldError, render, render_video
from vitron_rt.shapes.palette import BACKGROUND, COLOURS, KINDS, MOTIONS, PLACES, place_cell, place_of
from vitron_rt.shapes.render import jittered_box, mask_box, shape_mask

WORLD = ShapesWorld(seed=0)


def test_the_package_needs_neither_torch_nor_the_runtime():
    code = (
        "import sys; import vitron_rt.shapes.world, vitron_rt.shapes.judge, vitron_rt.shapes.tasks, "
        "vitron_rt.shapes.vocab, vitron_rt.shapes.chat; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('vitron_rt.runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scenes_are_pure_functions_of_seed_and_index():
    assert ShapesWorld(seed=3).scene(17) == ShapesWorld(seed=3).scene(17)
    assert ShapesWorld(seed=3).video(5) == ShapesWorld(seed=3).video(5)
    assert ShapesWorld(seed=3).scene(17) != ShapesWorld(seed=4).scene(17)
    assert len({WORLD.scene(i) for i in range(50)}) == 50
    a = render(WORLD.scene(9)).image
    assert np.array_equal(a, render(WORLD.scene(9)).image)


@pytest.mark.parametrize("index", range(0, 300, 7))
def test_scene_promises(index):
    c = WORLD.config
    scene = WORLD.scene(index)
    assert c.min_shapes <= len(scene) <= c.max_shapes
    assert len({(s.colour, s.kind) for s in scene.shapes}) == len(scene)
    drawn = render(scene)
    assert drawn.visible_fraction.min() >= c.min_visible - 1e-9
    cell = c.size / 3
    for s in scene.shapes:
        assert c.min_radius <= s.size <= c.max_radius
        # The centre is at least cell_margin inside its cell: its place is never a coin toss.
        for v in (s.x, s.y):
            assert min(v % cell, cell - v % cell) >= c.cell_margin - 1e-9
        assert s.size < s.x < c.size - s.size and s.size < s.y < c.size - s.size


def test_every_count_kind_colour_and_place_occurs():
    scenes = [WORLD.scene(i) for i in range(400)]
    assert {len(s) for s in scenes} == {1, 2, 3, 4}
    shapes = [(sc, i) for sc in scenes for i in range(len(sc))]
    assert {sc.shapes[i].kind for sc, i in shapes} == set(KINDS)
    assert {sc.shapes[i].colour for sc, i in shapes} == set(COLOURS)
    assert {sc.place(i) for sc, i in shapes} == set(PLACES)
    # Occlusion happens: some shape is partly hidden in some scene.
    assert any(render(sc).visible_fraction.min() < 0.99 for sc in scenes[:100])


def test_pixels_masks_and_boxes_agree():
    for i in range(40):
        scene = WORLD.scene(i)
        drawn = render(scene)
        assert drawn.image.shape == (128, 128, 3) and drawn.image.dtype == np.uint8
        for k, s in enumerate(scene.shapes):
            assert (drawn.image[drawn.masks[k]] == COLOURS[s.colour]).all()
            assert (drawn.masks[k] <= drawn.full_masks[k]).all()
        background = ~drawn.masks.any(0)
        assert (drawn.image[background] == BACKGROUND).all()
        # Visible masks never overlap.
        assert drawn.masks.sum(0).max() <= 1
        for m, box in zip(drawn.masks, drawn.boxes):
            ys, xs = np.nonzero(m)
            expected = [xs.min() / 128, ys.min() / 128, (xs.max() + 1) / 128, (ys.max() + 1) / 128]
            assert box.tolist() == pytest.approx(expected)


def test_a_later_shape_occludes_an_earlier_one():
    back = Shape("square", "red", 64, 64, 20)
    front = Shape("circle", "blue", 64, 64, 10)
    drawn = render(Scene((back, front)))
    assert drawn.masks[1].sum() == drawn.full_masks[1].sum()
    assert not (drawn.masks[0] & drawn.full_masks[1]).any()
    assert (drawn.image[64, 64] == COLOURS["blue"]).all()
    assert 0 < drawn.visible_fraction[0] < 1


@pytest.mark.parametrize("index", range(0, 60, 3))
def test_video_promises(index):
    c = WORLD.config
    scene = WORLD.video(index)
    video = render_video(scene, c.frames)
    assert video.frames.shape == (c.frames, 128, 128, 3) and c.frames >= 16
    assert video.masks.shape == (c.frames, len(scene), 128, 128)
    full = np.stack([render(scene.at(t)).full_masks for t in range(c.frames)])  # (T, n, H, W)
    fraction = video.masks.sum((2, 3)) / full.sum((2, 3))
    assert fraction[0].min() >= c.min_visible - 1e-9
    assert fraction.min() >= c.video_min_visible - 1e-9
    for s in scene.shapes:
        end = s.at(c.frames - 1)
        for v in (s.x, s.y, end.x, end.y):
            assert s.size < v < c.size - s.size  # inside the frame from the first frame to the last


def test_shapes_move_the_way_their_motion_says():
    movers = [(sc, s) for sc in (WORLD.video(i) for i in range(40)) for s in sc.shapes if s.moves]
    assert {s.motion for _, s in movers} == {"left", "right", "up", "down"}
    for scene, s in movers[:20]:
        video = render_video(Scene((s,), scene.width, scene.height), 16)
        ys, xs = np.nonzero(video.masks[0, 0])
        ye, xe = np.nonzero(video.masks[-1, 0])
        dx, dy = MOTIONS[s.motion]
        moved = np.array([xe.mean() - xs.mean(), ye.mean() - ys.mean()])
        assert moved @ np.array([dx, dy]) > 20  # 15 frames at >= 1.6 px
        assert abs(moved @ np.array([dy, dx])) < 1.5  # and not sideways
    still = [s for sc in (WORLD.video(i) for i in range(40)) for s in sc.shapes if not s.moves]
    assert still and all(s.at(15) == s for s in still)


def test_specs_are_honoured_and_separate_scenes_keep_apart():
    rng = np.random.default_rng(0)
    specs = [ShapeSpec("red", "circle", "top left"), ShapeSpec("blue", "star", "bottom right")]
    for _ in range(20):
        scene = WORLD.sample_scene(rng, specs=specs, separate=True)
        assert [(s.colour, s.kind) for s in scene.shapes] == [("red", "circle"), ("blue", "star")]
        assert [scene.place(i) for i in range(2)] == ["top left", "bottom right"]
        full = render(scene).full_masks
        grown = cv2.dilate(full[0].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert not (grown & full[1]).any()


def test_impossible_requests_are_clear_errors():
    with pytest.raises(ValueError, match="same colour and kind"):
        WORLD.sample_scene(np.random.default_rng(0), specs=[ShapeSpec("red", "circle")] * 2)
    with pytest.raises(ValueError, match="unknown colour"):
        WORLD.sample_scene(np.random.default_rng(0), specs=[ShapeSpec("teal", "circle")])
    with pytest.raises(ValueError, match="unknown place"):
        WORLD.sample_scene(np.random.default_rng(0), specs=[ShapeSpec("red", "circle", "middle")])
    with pytest.raises(ValueError, match="too large"):
        WorldConfig(max_radius=40)
    crowded = ShapesWorld(WorldConfig(min_radius=19, max_radius=20, max_tries=5))
    with pytest.raises(WorldError, match="constraints"):
        crowded.sample_scene(np.random.default_rng(0), specs=[ShapeSpec(place="center")] * 3, separate=True)
    with pytest.raises(ValueError, match="unknown kind"):
        Shape("hexagon", "red", 10, 10, 5)


def test_places_and_boxes():
    assert PLACES == (
        *("top left", "top", "top right"),
        *("left", "center", "right"),
        *("bottom left", "bottom", "bottom right"),
    )
    assert all(place_of(*[(c + 0.5) * 128 / 3 for c in reversed(place_cell(p))], 128, 128) == p for p in PLACES)
    m = shape_mask(Shape("square", "red", 40.0, 60.0, 10.0), 128, 128)
    assert mask_box(m) == pytest.approx((32 / 128, 52 / 128, 48 / 128, 68 / 128), abs=1 / 128)
    assert mask_box(np.zeros((8, 8), bool)) == (0.0, 0.0, 0.0, 0.0)
    box = jittered_box(m, np.random.default_rng(0), pixels=2.0)
    assert np.abs(np.array(box) - np.array(mask_box(m))).max() <= 2 / 128 + 1e-9


def test_scene_edits():
    scene = WORLD.scene(11)
    recoloured = scene.replace_shape(0, colour="white" if scene.shapes[0].colour != "white" else "red")
    assert recoloured.shapes[1:] == scene.shapes[1:] and recoloured.shapes[0].kind == scene.shapes[0].kind
    assert len(scene.without(0)) == len(scene) - 1
    s = scene.shapes[0]
    assert scene.index(s.colour, s.kind) == 0
    with pytest.raises(KeyError):
        scene.index("red", "hexagon")
