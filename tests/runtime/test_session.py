"""Sessions and conversations: multi-turn prefill reuse (Vicuna and SmolLM2 templates),
image / video / region prefill, the encoder cache, signal-token gathering (emitted and
appended), the task-pipeline hook, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from vitron_rt.engines import OrtOptions
from vitron_rt.runtime import generate as generate_mod
from vitron_rt.runtime import tasks
from vitron_rt.runtime.errors import MediaError, MessageError, RegionError, VitronInputError
from vitron_rt.runtime.kv_cache import HostKvCache
from vitron_rt.runtime.messages import HybridMessage
from vitron_rt.runtime.media import VideoWriter, write_png_atomic
from vitron_rt.runtime.prefill import splice
from vitron_rt.runtime.sampling import SamplingParams
from vitron_rt.runtime.session import Session
from vitron_rt.runtime.tasks import TaskOutput, TaskRequest, register_pipeline

GREEDY = SamplingParams(greedy=True, max_new_tokens=6)
TEST_OPTIONS = OrtOptions(intra_op_threads=1, cache_optimized=False)


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    with Session(tiny_bundle, options=TEST_OPTIONS, verify=False) as s:
        yield s


@pytest.fixture(scope="module")
def smol(smollm2_bundle):
    with Session(smollm2_bundle, options=TEST_OPTIONS, verify=False) as s:
        yield s


@pytest.fixture
def force(monkeypatch):
    """`force(ids)`: the next generation emits `ids` first (then samples as asked), a
    well-behaved model on demand."""
    scripts: list[list[int]] = []
    real = generate_mod.Sampler

    class Forced(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._script = scripts.pop(0) if scripts else []

        def next_token(self, logits):
            if self._script:
                token = self._script.pop(0)
                self.observe((token,))
                return token
            return super().next_token(logits)

    monkeypatch.setattr(generate_mod, "Sampler", Forced)
    return lambda ids: scripts.append(list(ids))


@pytest.fixture
def no_pipelines(monkeypatch):
    """An empty pipeline registry for the test (the built-ins not loaded)."""
    monkeypatch.setattr(tasks, "_PIPELINES", {})
    monkeypatch.setattr(tasks, "_builtins_loaded", True)


def _image(path, seed: int, size=(40, 56)):
    img = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    write_png_atomic(path, img)
    return path, img


def _patches(session: Session) -> int:
    return session.manifest.components["vision_encoder"].outputs[0].shape[1]


# --------------------------------------------------------------------------- conversations


def test_vicuna_second_turn_prefills_only_the_new_tokens(tiny, force):
    tok = tiny.tokenizer
    eos = tok.eos_token_id
    reply = tok.encode(" fine, thanks", add_special_tokens=False)
    conv = tiny.conversation()
    force(reply + [eos])
    r1 = conv.run("How are you?", sampling=SamplingParams(greedy=True, max_new_tokens=20))
    assert r1.text == " fine, thanks" and r1.debug["reprefill"] is None
    assert conv.messages[-1] == {"role": "assistant", "content": "fine, thanks"}  # the template adds the space

    r2 = conv.run("And the weather?", sampling=GREEDY)
    history = conv.messages[:-1]  # up to the second question
    full_ids = tok.apply_chat_template(history)
    held = tok.render_chat(history[:1]) + " fine, thanks"  # what the cache covered after turn 1
    new = tok.encode(tok.render_chat(history)[len(held) :], add_special_tokens=False)
    assert r2.debug["reprefill"] is None
    assert r2.debug["reused_positions"] == r1.usage.prompt_tokens + len(reply)
    assert r2.debug["prefill_positions"] == len(new) < len(full_ids) / 2
    assert r2.usage.prompt_tokens == len(full_ids)
    # The same reply as a fresh prefill of the whole history.
    assert r2.text == tiny.generator.generate(full_ids, GREEDY).text


def test_reply_the_template_writes_back_differently_is_prefilled_again(tiny):
    """The random tiny model answers "::::" right after "ASSISTANT:", while the Vicuna
    template writes "ASSISTANT: " + reply: the cache is cut back to the end of the first
    prompt, and only the reply and the new turn are pre-filled."""
    conv = tiny.conversation()
    r1 = conv.run("Hello", sampling=GREEDY)
    assert not r1.text.startswith(" ")
    r2 = conv.run("Again", sampling=GREEDY)
    assert r2.debug["reprefill"] == "reply" and "renders the history differently" in r2.debug["reprefill_reason"]
    assert r2.debug["reused_positions"] == r1.usage.prompt_tokens
    full_ids = tiny.tokenizer.apply_chat_template(conv.messages[:-1])
    assert r2.debug["reused_positions"] + r2.debug["prefill_positions"] == len(full_ids) == r2.usage.prompt_tokens
    assert r2.text == tiny.generator.generate(full_ids, GREEDY).text


def test_smollm2_second_turn_prefills_only_the_new_tokens(smol):
    tok = smol.tokenizer
    params = SamplingParams(greedy=True, max_new_tokens=24)
    conv = smol.conversation()
    r1 = conv.run("What is the capital of France?", sampling=params)
    assert "Paris" in r1.text and r1.finish_reason == "eos"
    r2 = conv.run("And of Germany?", sampling=params)
    assert "Berlin" in r2.text
    history = conv.messages[:-1]
    held = tok.render_chat(history[:1]) + r1.text  # prompt 1 and the reply; its EOS is not fed
    new = tok.encode(tok.render_chat(history)[len(held) :], add_special_tokens=False)
    assert r2.debug["reprefill"] is None
    assert r2.debug["reused_positions"] == r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
    assert r2.debug["prefill_positions"] == len(new)
    full_ids = tok.apply_chat_template(history)
    assert r2.usage.prompt_tokens == len(full_ids) and len(new) < len(full_ids) / 2
    full = smol.generator.generate(full_ids, params)
    assert r2.text == full.text
    # Timing follows the counts: re-running both, the incremental prefill is the faster.
    again = smol.conversation()
    again.run("What is the capital of France?", sampling=params)
    incremental = min(r2.timings_ms["prefill"], again.run("And of Germany?", sampling=params).timings_ms["prefill"])
    whole = min(
        smol.generator.generate(full_ids, SamplingParams(greedy=True, max_new_tokens=1)).timings_ms["prefill"]
        for _ in range(2)
    )
    assert incremental < whole


def test_history_edited_by_hand_is_prefilled_again_without_re_encoding(tiny, tmp_path):
    path, _ = _image(tmp_path / "a.png", seed=1)
    conv = tiny.conversation()
    r1 = conv.run("Describe", image=path, sampling=GREEDY)
    conv.messages[0]["content"] = conv.messages[0]["content"].replace("Describe", "Describe it")
    r2 = conv.run("More", sampling=GREEDY)
    assert r2.debug["reprefill"] == "full" and r2.debug["reused_positions"] == 0
    assert r2.debug["encoder_cache"] == {"hits": 0, "misses": 0}  # the image's embeddings were kept
    assert r2.usage.prompt_tokens == len(tiny.tokenizer.apply_chat_template(conv.messages[:-1])) + _patches(tiny) - 1
    assert r1.usage.prompt_tokens < r2.usage.prompt_tokens


# --------------------------------------------------------------------------- multimodal prefill


def test_splice_replaces_each_placeholder_by_its_rows():
    d = 3
    ids = [5, 9, 6, 9, 7, 8]
    tokens = np.arange(len(ids) * d, dtype=np.float32).reshape(1, len(ids), d)
    a = np.full((4, d), -1.0, np.float32)
    b = np.full((2, d), -2.0, np.float32)
    r = np.full((d,), -3.0, np.float32)
    out = splice(tokens, ids, {9: [a, b], 8: [r]})
    assert out.shape == (1, len(ids) + 3 + 1 + 0, d)
    want = np.concatenate([tokens[0, :1], a, tokens[0, 2:3], b, tokens[0, 4:5], r[None]])
    np.testing.assert_array_equal(out[0], want)
    with pytest.raises(MessageError, match="2 placeholder"):
        splice(tokens, ids, {9: [a]})


def test_image_prefill_grows_by_patches_and_hits_the_cache(tiny, tmp_path):
    path, img = _image(tmp_path / "img.png", seed=2)
    n = _patches(tiny)
    tok = tiny.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is this?"}])
    r = tiny.run("What is this?", image=path, sampling=GREEDY)
    assert r.usage.prompt_tokens == len(ids) + n - 1
    assert r.debug["encoder_cache"] == {"hits": 0, "misses": 1}
    assert {"preprocess", "vision_encoder", "projector", "prefill", "decode"} <= set(r.timings_ms)
    again = tiny.run("What is this?", image=img.copy(), sampling=GREEDY)  # same pixels, as an array
    assert again.debug["encoder_cache"] == {"hits": 1, "misses": 0} and "vision_encoder" not in again.timings_ms
    assert again.text == r.text

    boxed = tiny.run("What is this?", image=path, region=(0.1, 0.2, 0.6, 0.9), sampling=GREEDY)
    ids_r = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is this? <region>"}])
    assert boxed.usage.prompt_tokens == len(ids_r) + n - 1  # the region is one token for one
    assert "region_encoder" in boxed.timings_ms and boxed.debug["encoder_cache"]["hits"] == 1
    drawn = np.zeros(img.shape[:2], np.uint8)
    drawn[5:30, 10:40] = 255
    sketched = tiny.run("What is <region> here?", image=path, region=drawn, sampling=GREEDY)
    ids_s = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is <region> here?"}])
    assert sketched.usage.prompt_tokens == len(ids_s) + n - 1


def test_video_prefill_has_one_slot_per_sampled_frame(tiny, tmp_path):
    frames = tiny.manifest.video_frames
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(3)
    with VideoWriter(path, fps=10) as w:
        for _ in range(9):
            w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    n = _patches(tiny)
    r = tiny.run("What happens?", video=path, sampling=GREEDY)
    ids = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "<image>" * frames + "\nWhat happens?"}])
    assert r.usage.prompt_tokens == len(ids) + frames * (n - 1)
    assert r.debug["encoder_cache"] == {"hits": 0, "misses": frames}
    # A video shorter than `frames` repeats frames: each distinct frame is encoded once.
    short = tmp_path / "short.mp4"
    with VideoWriter(short, fps=10) as w:
        for _ in range(2):
            w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    r = tiny.run("What happens?", video=short, sampling=GREEDY)
    assert r.usage.prompt_tokens == len(ids) + frames * (n - 1)
    assert r.debug["encoder_cache"] == {"hits": 0, "misses": 2}


# --------------------------------------------------------------------------- signal tokens


def _reference_hidden(session: Session, img: np.ndarray, user: str, fed: list[int]) -> np.ndarray:
    """Hidden states of `fed` after the image prompt, from one plain prefill (no reuse)."""
    gen, tok = session.generator, session.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": user}])
    image = session.media.encode_images([img], {})[0]
    prompt = splice(gen.embedder.embed(ids), ids, {session.image_id: [image.embeds]})
    cache = HostKvCache(session.runner("llm_decoder"), session.manifest.llm, 512)
    cache.forward(prompt)
    return cache.forward(gen.embedder.embed(fed)).hidden.copy()


@pytest.mark.parametrize(
    "script, source, fed",
    [
        (["a", "s0", "s1", "eos"], "emitted", ["a", "s0", "s1"]),  # states recorded while decoding
        (["a", "s0", "s1"], "emitted", ["a", "s0", "s1"]),  # the last one never fed: a look-ahead
        (["a", "b", "eos"], "appended", ["a", "b", "s0", "s1"]),  # EOS dropped, signal appended
        (["a", "b"], "appended", ["a", "b", "s0", "s1"]),  # the unfed last token fed first
    ],
)
def test_signal_hidden_states(tiny, force, no_pipelines, tmp_path, script, source, fed):
    path, img = _image(tmp_path / "sig.png", seed=4)
    sig = list(tiny.signal_ids)
    names = {"a": 70, "b": 71, "s0": sig[0], "s1": sig[1], "eos": tiny.tokenizer.eos_token_id}
    force([names[t] for t in script])
    r = tiny.run(
        "Segment the cat", image=path, task="segment", sampling=SamplingParams(greedy=True, max_new_tokens=len(script))
    )
    assert r.message.module == "segment_image" and r.message.instructions == ("Segment the cat",)
    assert r.debug["signal_source"] == source
    ids = [names[t] for t in fed]
    want = _reference_hidden(tiny, img, "<image>\nSegment the cat", ids)[-len(sig) :]
    if source == "emitted":
        want = _reference_hidden(tiny, img, "<image>\nSegment the cat", ids)[[ids.index(s) for s in sig]]
    np.testing.assert_allclose(r.message.signal, want, atol=1e-5)
    assert r.conditioning.shape == (1, len(sig), 32)
    assert {"signal_prefill", "signal_projector"} <= set(r.timings_ms)
    assert any("no pipeline is registered for segment_image" in n for n in r.notes)


# --------------------------------------------------------------------------- the pipeline hook


def test_registered_pipeline_gets_the_request(tiny, no_pipelines, tmp_path):
    path, img = _image(tmp_path / "p.png", seed=5)
    seen = {}

    @register_pipeline("segment_image")
    def fake(request):
        seen["request"] = request
        with request.timed("fake_stage"):
            out = write_png_atomic(request.out_dir / "mask.png", np.zeros(img.shape[:2], bool))
        request.info["area"] = 0.0
        return [TaskOutput("mask", out)]

    out_dir = tmp_path / "out" / "nested"
    r = tiny.run("Segment the astronaut", image=path, task="segment", out_dir=out_dir, sampling=GREEDY)
    assert [o.to_dict() for o in r.outputs] == [{"kind": "mask", "path": str(out_dir / "mask.png")}]
    req = seen["request"]
    assert req.module == "segment_image" and req.image_path == path and req.video is None
    np.testing.assert_array_equal(req.image, img)
    assert req.conditioning.shape == (1, 2, 32) and req.message.signal.shape == (2, 64)
    assert {"fake_stage", "signal_projector", "prefill", "decode"} <= set(r.timings_ms)
    assert r.debug["pipeline"] == {"area": 0.0}
    d = r.to_dict()
    assert d["message"] == {"module": "segment_image", "instructions": ["Segment the astronaut"], "region": None}

    # No pipeline for a module, or the wrong media for it: a note, no outputs, no failure.
    gen = tiny.run("Paint a cat", task="generate", sampling=GREEDY)
    assert gen.outputs == [] and any("no pipeline is registered for generate_image" in n for n in gen.notes)
    wrong = tiny.run("Segment", task="segment_image", sampling=GREEDY)
    assert wrong.outputs == [] and any("works on an image" in n for n in wrong.notes)


def _request_without_a_bundle(message: HybridMessage, tmp_path, **kw) -> TaskRequest:
    """A request for an adapted pipeline class that reads nothing of the bundle."""
    return TaskRequest(
        module=message.module,
        message=message,
        conditioning=np.zeros((1, 2, 4), np.float32),
        out_dir=tmp_path,
        bundle=SimpleNamespace(manifest=None),
        runners={},
        image_path=tmp_path / "x.png",
        **kw,
    )


def test_adapted_pipeline_gets_the_users_box_when_the_message_names_none(tmp_path):
    seen = []

    class Recorder:
        def __init__(self, manifest, runners):
            pass

        def run(self, message, signal, media, out_dir, timings):
            seen.append(message)
            return SimpleNamespace(outputs=[], info={})

    run = tasks._adapt(Recorder)
    signal = np.ones((2, 8), np.float32)
    bare = HybridMessage("segment_image", ("the red circle",)).with_signal(signal)
    boxed = HybridMessage("segment_image", ("the red circle",), region=(0.5, 0.5, 0.9, 0.9)).with_signal(signal)
    user_box = (0.1, 0.2, 0.3, 0.4)
    for message in (bare, boxed):
        region = message.region if message.region is not None else user_box
        assert run(_request_without_a_bundle(message, tmp_path, region=region)) == []
    (no_region, own_region) = seen
    assert no_region.region == (0.1, 0.2, 0.3, 0.4) and no_region.instructions == ("the red circle",)
    assert no_region.signal is signal  # the signal tokens ride along
    assert own_region.region == (0.5, 0.5, 0.9, 0.9)  # the model's own region wins


def test_adapted_pipelines_get_the_sessions_options_and_the_requests_seed(tmp_path):
    from vitron_rt.runtime.pipelines import DiffusionOptions, SegmentOptions

    built = []

    class Draws:  # a back end that runs the UNet and cuts a mask (an edit)
        components = ("seg_image_encoder", "unet")

        def __init__(self, manifest, runners, options=None, segment_options=None):
            built.append((type(self).__name__, options, segment_options))

        def run(self, message, signal, media, out_dir, timings):
            return SimpleNamespace(outputs=[], info={})

    class Cuts(Draws):  # a segmentation back end: its `options` are SegmentOptions
        components = ("seg_image_encoder",)

        def __init__(self, manifest, runners, options=None):
            built.append((type(self).__name__, options, None))

    diffusion, segmentation = DiffusionOptions(strength=1.0, seed=3), SegmentOptions(threshold=0.5)
    message = HybridMessage("edit_image", ("make it blue",)).with_signal(np.ones((2, 8), np.float32))

    def request(**kw):
        return _request_without_a_bundle(message, tmp_path, **kw)

    for cls in (Draws, Cuts):
        run = tasks._adapt(cls)
        run(request())  # no options: the classes' defaults
        run(request(diffusion=diffusion, segmentation=segmentation))
        run(request(diffusion=diffusion, segmentation=segmentation, seed=11))  # the request's seed wins
        run(request(seed=12))  # a seed alone: the default options with it
    assert built[:4] == [
        ("Draws", None, None),
        ("Draws", diffusion, segmentation),
        ("Draws", DiffusionOptions(strength=1.0, seed=11), segmentation),
        ("Draws", DiffusionOptions(seed=12), None),
    ]
    assert built[4:] == [("Cuts", None, None), ("Cuts", segmentation, None), ("Cuts", segmentation, None)] + [
        ("Cuts", None, None)  # no UNet: the seed is not its
    ]
    with pytest.raises(TypeError, match="diffusion must be a DiffusionOptions"):
        Session(tmp_path, diffusion={"strength": 1.0})  # before the bundle is read


def test_builtin_segmentation_pipeline_through_the_hook(tiny, tmp_path):
    path, _ = _image(tmp_path / "seg.png", seed=6, size=(48, 64))
    r = tiny.run("Segment it", image=path, task="segment", out_dir=tmp_path / "seg", sampling=GREEDY)
    kinds = {o.kind for o in r.outputs}
    assert "mask" in kinds and all(o.path.is_file() for o in r.outputs)


def test_text_only_bundle_forced_task_is_a_note(smol):
    r = smol.run("Segment the dog", task="segment_image", sampling=SamplingParams(greedy=True, max_new_tokens=4))
    assert r.outputs == [] and r.message.module == "segment_image"
    assert any("no signal projector for segment_image" in n for n in r.notes)
    understand = smol.run("Hi", task="understand", sampling=SamplingParams(greedy=True, max_new_tokens=4))
    assert understand.message is None and understand.notes == []


# --------------------------------------------------------------------------- bad input


def test_bad_requests_are_one_line_errors(tiny, smol, tmp_path):
    path, _ = _image(tmp_path / "ok.png", seed=7)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (MessageError, "unknown module", dict(task="paint_the_fence")),
        (RegionError, "must lie in [0, 1]", dict(image=path, region=(0.1, 0.1, 1.5, 0.9))),
        (RegionError, "give an image or a video", dict(region=(0.1, 0.1, 0.5, 0.9))),
        (VitronInputError, "an image or a video, not both", dict(image=path, video=path)),
        (MediaError, "no such image file", dict(image=tmp_path / "missing.png")),
        (MediaError, "output folder", dict(out_dir=blocker / "out")),
        (MediaError, "output folder is a file", dict(out_dir=blocker)),
        (MessageError, "needs an instruction", dict(image=path, task="segment", prompt="<image>")),
    ]
    for cls, text, kwargs in cases:
        with pytest.raises(cls) as e:
            tiny.run(kwargs.pop("prompt", "x"), sampling=GREEDY, **kwargs)
        assert text in str(e.value) and "\n" not in str(e.value), kwargs
    with pytest.raises(MessageError, match="placeholder"):
        tiny.run("look at <image> please", sampling=GREEDY)
    with pytest.raises(VitronInputError, match="no vision_encoder"):
        smol.run("x", image=path)
    assert not (blocker.parent / "out").exists()


def test_pipeline_runners_do_not_spin_the_llm_runners_do(tiny_bundle):
    """ONNX Runtime's intra-op spinning stays on for the LLM's runners (its decode loop
    waits on them alone) and is off for the components the task pipelines run beside
    threads of their own; options that set it explicitly win everywhere."""
    with Session(tiny_bundle, threads=1) as session:
        llm = session.manifest.llm
        for name in (llm.component, llm.embed_component):
            assert "session.intra_op.allow_spinning" not in session._options_for(name).config
        seg = session._options_for("seg_image_encoder")
        assert seg.config["session.intra_op.allow_spinning"] == "0" and seg.intra_op_threads == 1
        assert session.runner("seg_image_encoder").options.config["session.intra_op.allow_spinning"] == "0"
    chosen = OrtOptions(intra_op_threads=1, config={"session.intra_op.allow_spinning": "1"})
    with Session(tiny_bundle, options=chosen) as session:
        assert session._options_for("seg_image_encoder") is chosen
