"""`python -m vitron_rt.train.mini`: a run of one small step per stage writes weights that
`from_preset("mini")` loads (with the ShapesWorld tokenizer), the same seed writes the
same bytes, and the loader refuses missing, corrupt or stale files with a clear error."""

import dataclasses
import json
import shutil
import zlib

import pytest
import torch

from vitron_rt.bundle import Source
from vitron_rt.models.config import config_differences, preset
from vitron_rt.models.shipped import ShippedFiles
from vitron_rt.models.source import SourceError, from_preset, from_source
from vitron_rt.models.tokenizer import vitron_special_tokens
from vitron_rt.train import mini
from vitron_rt.train.stages import STAGES
from vitron_rt.train.trainer import denormals_flushed

CFG = preset("mini")
ONE_STEP = {name: 1 for name in STAGES}
# One step per stage on two still images: the recipe's code path, in seconds.
SLICE = {"seg_image": 1.0, "gen_image": 1.0, "edit_recolour": 1.0}
SMALL = {
    name: stage.replace(batch_size=2, bucket_by_media=False, mix=SLICE if name != "alignment" else stage.mix)
    for name, stage in STAGES.items()
}


def _train(out):
    return mini.train(out, seed=0, steps=ONE_STEP, threads=1, log=lambda m: None, stages=SMALL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    record = _train(out)
    return out, record


def test_a_quick_run_writes_loadable_weights(run):
    out, record = run
    files = ShippedFiles(out, "mini")
    assert record["training"]["steps"] == ONE_STEP and record["training"]["seed"] == 0
    assert record["config"] == json.loads(json.dumps(CFG.to_dict()))
    assert (out / "model.safetensors").is_file() and (out / "log.json").is_file()
    # int8 for the matrices: about a byte a parameter, a quarter of the fp32 file.
    assert files.weights.stat().st_size < 0.3 * (out / "model.safetensors").stat().st_size
    ref = from_preset("mini", trained_dir=out)
    assert ref.source.preset == "mini"
    assert ref.source.config["load"] == {"preset": "mini", "weights_sha256": record["weights"]["sha256"]}
    assert ref.tokenizer.vocab_size == CFG.llm.vocab_size
    assert ref.tokenizer.special_tokens == vitron_special_tokens(CFG.signal.num_tokens)
    assert (ref.tokenizer.bos_token, ref.tokenizer.eos_token) == ("<s>", "</s>")
    assert "ASSISTANT" in ref.tokenizer.chat_template
    emb = ref.components["embed_tokens"]
    ids = torch.tensor([[ref.tokenizer.token_id("<sig_0>"), ref.tokenizer.token_id("<image>")]])
    with torch.no_grad():
        assert emb(ids).shape == (1, 2, CFG.llm.hidden_size)
        x = torch.zeros(1, 3, CFG.vision.image_size, CFG.vision.image_size)
        assert ref.components["vision_encoder"](x).shape == (1, CFG.vision.num_patches, CFG.vision.hidden_size)


def test_the_stored_weights_are_the_trained_ones_within_int8(run):
    out, _ = run
    from safetensors.torch import load_file

    trained = load_file(str(out / "model.safetensors"))
    ref = from_preset("mini", trained_dir=out)
    w = ref.components["llm_decoder"].model.model.layers[0].mlp.down_proj.weight
    full = next(v for k, v in trained.items() if k.endswith("layers.0.mlp.down_proj.weight"))
    step = full.abs().amax(1, keepdim=True) / 127  # int8 per output row
    assert ((w - full).abs() <= step / 2 + 1e-7).all()


def test_same_seed_same_bytes(run, tmp_path):
    """Also when the caller's thread flushes denormals (CI once got other bytes for the
    second run of one process: something earlier had left flushing on for the first)."""
    out, record = run
    torch.set_flush_denormal(True)
    try:
        again = _train(tmp_path / "again")
        assert denormals_flushed()  # the caller's state is put back
    finally:
        torch.set_flush_denormal(False)
    assert again["weights"]["sha256"] == record["weights"]["sha256"]
    assert again["tokenizer"]["sha256"] == record["tokenizer"]["sha256"]


def test_another_seed_starts_from_other_weights_and_draws_other_samples(tmp_path, monkeypatch, tok):
    from vitron_rt.models.model import VitronModel
    from vitron_rt.train.trainer import Trainer

    seeds, real = [], VitronModel.from_config.__func__
    built = classmethod(lambda cls, cfg: seeds.append(cfg.seed) or real(cls, cfg))
    monkeypatch.setattr(VitronModel, "from_config", built)
    mini.train(tmp_path, seed=1, steps=ONE_STEP, threads=1, log=lambda m: None, stages=SMALL)
    assert seeds == [1]
    model = real(VitronModel, CFG)
    stage = STAGES["instruction"]
    zero, one = Trainer(model, tok, seed=0), Trainer(model, tok, seed=1)
    first = [s.prompt for s in zero.samples(stage, 0)]
    assert first != [s.prompt for s in one.samples(stage, 0)]
    # Seed 0 draws the indices it drew before the seed took part (the shipped run's data).
    base = (zlib.crc32(b"instruction") & 0xFFFF) << 32
    plain = stage.replace(bucket_by_media=False, follow_ups=0)
    assert zero.samples(plain, 1)[0] == zero.tasks.mixed(stage.mix, base + stage.batch_size)


def test_the_module_runs_and_installs(tmp_path, monkeypatch):
    monkeypatch.setattr(mini, "STAGES", SMALL)
    monkeypatch.setattr(mini, "TRAINED_DIR", tmp_path / "installed")
    assert mini.main(["--out", str(tmp_path / "out"), "--scale", "0.001", "--threads", "1", "--install"]) == 0
    assert json.loads((tmp_path / "out" / "log.json").read_text())["pixel"]["steps"] == 1
    ref = from_preset("mini", trained_dir=tmp_path / "installed")
    record = json.loads(ShippedFiles(tmp_path / "out", "mini").record.read_text())
    assert ref.source.config["load"]["weights_sha256"] == record["weights"]["sha256"]


def test_repack_changes_the_storage_not_the_training(run, tmp_path, monkeypatch):
    out, record = run
    for f in ("model.safetensors", "mini.safetensors", "mini.tokenizer.json", "mini.json"):
        shutil.copyfile(out / f, tmp_path / f)
    monkeypatch.setattr(mini, "STORAGE_PLAN", {"unet.": "int4g32"})
    assert mini.main(["--out", str(tmp_path), "--repack"]) == 0
    again = json.loads((tmp_path / "mini.json").read_text())
    assert again["weights"]["plan"] == {"unet.": "int4g32"} and again["training"] == record["training"]
    assert (tmp_path / "mini.safetensors").stat().st_size < (out / "mini.safetensors").stat().st_size - 1_500_000
    from_preset("mini", trained_dir=tmp_path)


def test_scaled_steps():
    assert mini.scaled_steps(1.0) == mini.STEPS
    assert mini.scaled_steps(1e-6) == ONE_STEP  # every stage still runs
    with pytest.raises(ValueError, match="scale"):
        mini.scaled_steps(0)


def _copy(run, tmp_path):
    out, _ = run
    for f in ("mini.safetensors", "mini.tokenizer.json", "mini.json"):
        shutil.copyfile(out / f, tmp_path / f)
    return ShippedFiles(tmp_path, "mini")


def test_missing_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(SourceError, match=r"no trained weights.*python -m vitron_rt.train.mini"):
        from_preset("mini", trained_dir=tmp_path)


def test_a_corrupt_file_fails_its_checksum(run, tmp_path):
    files = _copy(run, tmp_path)
    data = bytearray(files.weights.read_bytes())
    data[-100] ^= 1
    files.weights.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"sha256 .* does not match"):
        from_preset("mini", trained_dir=tmp_path)


def test_weights_for_another_config_are_refused(run, tmp_path):
    files = _copy(run, tmp_path)
    record = json.loads(files.record.read_text())
    record["config"]["llm"]["num_layers"] += 1
    files.record.write_text(json.dumps(record))
    with pytest.raises(SourceError, match=r"another mini config .*differs in llm\.num_layers\)"):
        from_preset("mini", trained_dir=tmp_path)


def test_a_record_from_before_a_field_with_a_default_still_loads(run, tmp_path):
    """A config field added since the weights were trained counts as its default (what
    the code did before it existed); a value other than the default is refused."""
    files = _copy(run, tmp_path)
    record = json.loads(files.record.read_text())
    del record["config"]["unet"]["layout_kernel"]
    files.record.write_text(json.dumps(record))
    from_preset("mini", trained_dir=tmp_path)
    cfg = preset("mini")
    changed = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, layout_kernel=3))
    assert config_differences(record["config"], changed) == ["unet.layout_kernel"]
    record["config"]["retired_field"] = 1
    assert config_differences(record["config"], cfg) == ["retired_field"]
    del record["config"]["retired_field"], record["config"]["name"]  # a field without a default
    assert config_differences(record["config"], cfg) == ["name"]


def test_check_refuses_a_bundle_of_other_weights():
    """`check` rebuilds the reference from the manifest's Source: the recorded sha256 must
    be the shipped weights' (the package's own files are checked here)."""
    ref = from_preset("mini")
    again = from_source(ref.source)
    assert again.source == ref.source
    load = {**ref.source.config["load"], "weights_sha256": "0" * 64}
    with pytest.raises(SourceError, match="export the bundle again"):
        from_source(Source(preset="mini", config={**ref.source.config, "load": load}))
