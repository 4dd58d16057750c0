"""A model folder that is there but wrong fails loudly: the error names the file and what is wrong with it."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_video_model

from ma2mba import Mamba2LM, load_model
from ma2mba.hub import ModelFileError, ModelNotFoundError
from ma2mba.packaged import PACKAGED_MODEL_DIR


@pytest.fixture
def folder(tmp_path):
    tiny_video_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def rewrite_weights(folder, edit):
    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(weights), str(folder / "model.safetensors"))


def test_a_truncated_weights_file_names_the_file(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"model\.safetensors cannot be read as weights.*damaged or incomplete"):
        load_model(folder)


def test_wrong_shapes_name_each_tensor_and_both_shapes(folder):
    def widen(w):
        w["lm.backbone.norm_f.weight"] = torch.ones(33)
        return w

    rewrite_weights(folder, widen)
    with pytest.raises(
        ModelFileError, match=r"1 with the wrong shape: lm\.backbone\.norm_f\.weight: file \(33,\), model \(32,\)"
    ):
        load_model(folder)


def test_missing_and_unexpected_keys_are_listed(folder):
    def rename(w):
        w["lm.backbone.final_norm.weight"] = w.pop("lm.backbone.norm_f.weight")
        return w

    rewrite_weights(folder, rename)
    with pytest.raises(ModelFileError) as error:
        load_model(folder)
    message = str(error.value)
    assert "1 missing: lm.backbone.norm_f.weight" in message
    assert "1 unexpected: lm.backbone.final_norm.weight" in message
    assert str(folder / "model.safetensors") in message


def test_a_config_that_does_not_describe_the_weights_is_a_mismatch(folder):
    config = json.loads((folder / "config.json").read_text())
    config["lm"]["n_layer"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"does not match the model its config\.json describes: \d+ missing"):
        load_model(folder)


def test_a_broken_config_or_tokenizer_names_its_file(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"config\.json is not a Video-Ma²mba config"):
        load_model(folder)
    (other / "tokenizer.json").write_text("[]")
    with pytest.raises(ModelFileError, match=r"tokenizer\.json"):
        load_model(other)


def test_the_mamba2_lm_checks_its_weights_too(tmp_path):
    lm = Mamba2LM(tiny_video_model().config.lm)
    lm.save_pretrained(tmp_path)
    save_file({"backbone.embedding.weight": torch.zeros(64, 32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"missing: backbone\.layers\.0"):
        Mamba2LM.from_pretrained(tmp_path)


def test_the_packaged_model_never_falls_back_to_random_weights(tmp_path, monkeypatch):
    """Without its folder, load_model() raises: it used to hand back an untrained model without a word."""
    import ma2mba.packaged as packaged

    monkeypatch.setattr(packaged, "PACKAGED_MODEL_DIR", tmp_path / "gone")
    with pytest.raises(ModelNotFoundError, match="gone"):
        packaged.load_model()
    assert (PACKAGED_MODEL_DIR / "model.safetensors").is_file()  # the real one is untouched
