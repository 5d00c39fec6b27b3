"""diffusers <-> Flax U-Net / ControlNet directories: exact round trips and errors that name the problem."""
import json

import diffusers
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from editdiff.interop.diffusers_unet import export_controlnet, export_unet, load_controlnet, load_unet
from editdiff.interop.torch_io import CheckpointError
from unet_testing import SD1_TINY, randomize

SD2_TINY = dict(SD1_TINY, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                transformer_layers_per_block=(2, 1), use_linear_projection=True, upcast_attention=True)
# the edit vector's way into every ResNet (configs/multitask.py's model.edit_embedding)
CLASS_PROJECTION_TINY = dict(SD1_TINY, class_embed_type="projection", projection_class_embeddings_input_dim=9,
                             resnet_time_scale_shift="scale_shift")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sd1")
    randomize(diffusers.UNet2DConditionModel(**SD1_TINY), 0).save_pretrained(directory)
    return directory


def _assert_same_state_dict(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("config", [SD1_TINY, SD2_TINY, CLASS_PROJECTION_TINY],
                         ids=["conv_proj", "linear_proj", "class_projection_scale_shift"])
def test_unet_round_trip_is_exact(config, tmp_path):
    original = randomize(diffusers.UNet2DConditionModel(**config), 0)
    original.save_pretrained(tmp_path / "original")
    export_unet(load_unet(tmp_path / "original"), tmp_path / "exported")
    reloaded, info = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys, no errors
    _assert_same_state_dict(reloaded.state_dict(), original.state_dict())
    for key, value in original.config.items():
        if not key.startswith("_"):
            assert json.dumps(reloaded.config[key]) == json.dumps(value), key


def test_controlnet_round_trip_is_exact(tmp_path):
    unet = diffusers.UNet2DConditionModel(**SD1_TINY)
    original = randomize(diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)), 0)
    original.save_pretrained(tmp_path / "original")
    export_controlnet(load_controlnet(tmp_path / "original"), tmp_path / "exported")
    reloaded, info = diffusers.ControlNetModel.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert not any(info.values()), info
    _assert_same_state_dict(reloaded.state_dict(), original.state_dict())


def test_loads_torch_bin_like_safetensors(sd1_dir, tmp_path):
    diffusers.UNet2DConditionModel.from_pretrained(sd1_dir).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    from_bin = nnx.to_flat_state(nnx.state(load_unet(tmp_path), nnx.Param))
    from_safetensors = dict(nnx.to_flat_state(nnx.state(load_unet(sd1_dir), nnx.Param)))
    for path, param in from_bin:
        np.testing.assert_array_equal(np.asarray(param[...]), np.asarray(from_safetensors[path][...]))


def _copy_with(sd1_dir, tmp_path, *, config=None, state=None):
    """A copy of `sd1_dir` with its config.json and/or weights replaced."""
    (tmp_path / "config.json").write_text(json.dumps(config or json.loads((sd1_dir / "config.json").read_text())))
    if state is not None:
        save_file(state, str(tmp_path / WEIGHTS))
    return tmp_path


def test_missing_weights_file_is_named(sd1_dir, tmp_path):
    with pytest.raises(CheckpointError, match=f"no weights file; looked for {WEIGHTS}, diffusion_pytorch_model.bin"):
        load_unet(_copy_with(sd1_dir, tmp_path))


def test_unsupported_block_type_is_named(sd1_dir, tmp_path):
    config = json.loads((sd1_dir / "config.json").read_text())
    config["down_block_types"] = ["AttnDownBlock2D", "DownBlock2D"]
    with pytest.raises(CheckpointError, match="down_block_types='AttnDownBlock2D' is not supported"):
        load_unet(_copy_with(sd1_dir, tmp_path, config=config))


def test_misshaped_missing_and_unexpected_keys_are_listed(sd1_dir, tmp_path):
    state = load_file(str(sd1_dir / WEIGHTS))
    state["conv_in.weight"] = np.zeros((32, 4, 1, 1), np.float32)
    del state["mid_block.resnets.0.norm1.bias"]
    state["mid_block.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as error:
        load_unet(_copy_with(sd1_dir, tmp_path, state=state))
    message = str(error.value)
    print(message)
    assert "conv_in.weight: file (32, 4, 1, 1)" in message
    assert "missing keys (1): mid_block.resnets.0.norm1.bias" in message
    assert "unexpected keys (1): mid_block.extra.weight" in message


def test_config_that_does_not_match_the_weights_is_an_error(sd1_dir, tmp_path):
    config = json.loads((sd1_dir / "config.json").read_text())
    config["use_linear_projection"] = True  # proj_in weights are (out, in, 1, 1) convs in this checkpoint
    with pytest.raises(CheckpointError, match="proj_in.weight: file"):
        load_unet(_copy_with(sd1_dir, tmp_path, config=config, state=load_file(str(sd1_dir / WEIGHTS))))
