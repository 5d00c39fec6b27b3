"""The main job end to end on the tiny preset: train through the library entry point, eval / sample / export
modes, the exported PyTorch path, the comparison arms, config validation."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs.multitask import get_config
from editdiff.diffusion.parameterisation import q_sample
from editdiff.diffusion.timesteps import denoising_timesteps
from editdiff.methods.multitask import MultitaskMethod, strength_scales
from editdiff.train import mesh as mesh_lib
from editdiff.train import modes
from editdiff.train.build import initial_model


def tiny(arg: str = "tiny"):
    config = get_config(arg)
    config.mesh.data, config.mesh.fsdp = 1, 1
    return config


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """Two steps of the tiny preset through `modes.train`, with sample grids and evaluation at the end."""
    workdir = str(tmp_path_factory.mktemp("multitask"))
    outcome = modes.train(tiny(), workdir)
    assert outcome.step == 2 and not outcome.preempted
    return workdir


def test_train_writes_checkpoints_samples_and_tables(trained_workdir):
    assert sorted(os.listdir(os.path.join(trained_workdir, "checkpoints"))) == ["1", "2"]
    assert os.path.isfile(os.path.join(trained_workdir, "samples", "step_0000002.png"))
    with open(os.path.join(trained_workdir, "eval", "step_0000002.json")) as f:
        scores = json.load(f)["scores"]
    expected = {"blur", "grain", "colour", "inpaint", "sharpen",
                "blur+grain", "blur+grain+colour", "grain+colour", "grain+colour+sharpen"}
    assert set(scores) == expected
    for by_who in scores.values():
        assert set(by_who) == {"model", "do-nothing"}
        assert all(np.isfinite(v) for values in by_who.values() for v in values.values())
    table = open(os.path.join(trained_workdir, "eval", "step_0000002.md")).read()
    assert "| do-nothing |" in table and "| model |" in table and "grain+colour+sharpen SSIM" in table


def test_eval_and_sample_modes_restore_the_newest_checkpoint(trained_workdir):
    scores = modes.evaluate(tiny(), trained_workdir)["tables"]
    with open(os.path.join(trained_workdir, "eval", "step_0000002.json")) as f:
        written = json.load(f)["scores"]
    flat = lambda s: {(n, who, m): v for n, by_who in s.items() for who, vs in by_who.items() for m, v in vs.items()}  # noqa: E731
    assert flat(scores) == pytest.approx(flat(written), rel=1e-5)  # same EMA model, same seeded sampler noise
    assert os.path.isfile(modes.sample(tiny(), trained_workdir)["samples"])


def test_exported_pytorch_path_reproduces_the_noise_prediction(trained_workdir):
    from diffusers import UNet2DConditionModel as TorchUNet

    from editdiff.interop.mapping_network import load_torch_mapping_network
    from editdiff.train.build import load_trained_model

    config = tiny()
    written = modes.export(config, trained_workdir)
    export_dir = os.path.join(trained_workdir, "export")
    assert {os.path.relpath(p, export_dir) for p in written} == {
        "unet", "mapping", os.path.join("scheduler", "scheduler_config.json"), "multitask.json"}

    method = MultitaskMethod(config)
    model, _ = load_trained_model(config, trained_workdir, method, mesh_lib.create_mesh(config.mesh))
    batch = {k: jnp.asarray(v) for k, v in method.eval_sets()["grain+colour"].items()}
    conditions = model.conditions(batch)
    z_t = jax.random.normal(jax.random.key(3), conditions.image.shape[:3] + (model.autoencoder.latent_channels,))
    t = jnp.array([10, 900], jnp.int32)
    expected = model.denoise(z_t, t, conditions)

    unet = TorchUNet.from_pretrained(os.path.join(export_dir, "unet")).eval()
    mapping = load_torch_mapping_network(os.path.join(export_dir, "mapping"))
    nchw = lambda x: torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        spec = json.load(open(os.path.join(export_dir, "multitask.json")))
        edit = torch.from_numpy(np.array(batch["edit_vector"]))
        edit[:, :4] /= torch.tensor(spec["strength_scales"])  # C as the model reads it (multitask.json)
        torch_context = mapping(edit)
        unet_input = torch.cat([nchw(z_t), nchw(conditions.image)], dim=1)
        assert spec["edit_embedding"] and unet.config.class_embed_type == "projection"  # the tiny preset's
        prediction = unet(unet_input, torch.from_numpy(np.array(t)), torch_context, class_labels=edit).sample
    err = np.abs(prediction.permute(0, 2, 3, 1).numpy() - np.asarray(expected)).max()
    print(f"exported diffusers U-Net + torch mapping vs JAX noise prediction: max abs error {err:.2e}")
    assert err < 1e-4


def _eval_batch(method, name):
    return {k: jnp.asarray(v) for k, v in method.eval_sets()[name].items()}


def test_exported_pytorch_editor_reproduces_the_jax_edit(trained_workdir):
    """MultitaskEditor (diffusers U-Net + DDIMScheduler, torch mapping) reads multitask.json's strength scales,
    mask channel, residual and sampler and edits as the JAX sampler does from the same start noise — with the
    known region blended in (pure inpainting) and without (a combination)."""
    from editdiff.interop.multitask_torch import MultitaskEditor
    from editdiff.train.build import load_trained_model

    config = tiny()
    config.sampler.blend_known_region = blend = True
    modes.export(config, trained_workdir)
    export_dir = os.path.join(trained_workdir, "export")
    spec = json.load(open(os.path.join(export_dir, "multitask.json")))
    method = MultitaskMethod(config)
    assert spec["residual"] and spec["strength_scales"] == [1.0, 0.1, 3.0, 0.1] == list(strength_scales(config.data))
    assert spec["sampler"]["blend_known_region"] is blend

    model, _ = load_trained_model(config, trained_workdir, method, mesh_lib.create_mesh(config.mesh))
    editor = MultitaskEditor.from_export(export_dir)
    nchw = lambda x: torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)  # noqa: E731
    for name in ("inpaint", "blur+grain+colour"):
        batch = _eval_batch(method, name)
        rng = jax.random.key(5)
        expected = np.asarray(method.sample(model, batch, rng))
        x_T = jax.random.normal(jax.random.split(rng)[0], (len(expected), 8, 8, model.autoencoder.latent_channels))
        edited = editor(nchw(batch["source"]), nchw(batch["reference"]), nchw(batch["mask"]),
                        torch.from_numpy(np.array(batch["edit_vector"])), nchw(x_T))
        err = np.abs(edited.permute(0, 2, 3, 1).numpy() - expected).max()
        print(f"{name}: torch editor vs JAX sampler, max abs error {err:.2e}")
        assert err < 1e-3


def test_the_readmes_pytorch_edit_snippet_runs(trained_workdir, tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data as skdata

    modes.export(tiny(), trained_workdir)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    snippet = re.search(r"```python\n(from|import)(.*?MultitaskEditor.*?)```", readme, re.S)
    code = (snippet.group(1) + snippet.group(2)).replace("runs/demo/export", os.path.join(trained_workdir, "export"))
    Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert np.asarray(Image.open(tmp_path / "edited.png")).shape == (64, 64, 3)


def test_strengths_are_divided_by_the_upper_ends_of_their_ranges():
    config = tiny()
    model = MultitaskMethod(config).init_model(nnx.Rngs(0))
    edit = jnp.array([[0.5, 0.05, 2.0, 0.02, 1, 1, 0, 0, 1]], jnp.float32)
    np.testing.assert_allclose(model.edit_input(edit), [[0.5, 0.5, 2 / 3, 0.2, 1, 1, 0, 0, 1]], rtol=1e-6)
    config.model.use_task_labels = False
    assert MultitaskMethod(config).init_model(nnx.Rngs(0)).edit_input(edit).shape == (1, 4)


def test_residual_formulation_starts_from_doing_nothing():
    """With config.model.residual, a denoiser that predicts a zero residual returns the source exactly, and the
    loss's target is z_B - z_A."""
    config = tiny()
    config.diffusion.prediction_type = "sample"
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))
    batch = _eval_batch(method, "blur")
    model.denoise = lambda z, t, conditions: jnp.zeros_like(z)
    edited = method.sample(model, batch, jax.random.key(0))
    np.testing.assert_allclose(edited, batch["source"], atol=1e-6)
    conditions = model.conditions(batch).image
    assert conditions.shape[-1] == 12 + 3 + 1  # source latent, reference, mask channel
    np.testing.assert_allclose(conditions[..., -1:], 1.0)  # nothing masked in the blur set


def _torch_edit_error(method, model, batch, export_dir) -> tuple[float, np.ndarray]:
    """Exports `model` to `export_dir` and edits `batch` with MultitaskEditor and with the JAX sampler from the
    same start noise: (max abs difference, the JAX edit (B, H, W, 3))."""
    from editdiff.interop.multitask_torch import MultitaskEditor

    nchw = lambda x: torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)  # noqa: E731
    rng = jax.random.key(5)
    expected = np.asarray(method.sample(model, batch, rng))
    latent_size = method.config.data.crop_size // model.autoencoder.downsample_factor
    x_T = jax.random.normal(jax.random.split(rng)[0],
                            (len(expected), latent_size, latent_size, model.autoencoder.latent_channels))
    method.export(model, str(export_dir))
    editor = MultitaskEditor.from_export(str(export_dir))
    edited = editor(nchw(batch["source"]), nchw(batch["reference"]), nchw(batch["mask"]),
                    torch.from_numpy(np.array(batch["edit_vector"])), nchw(x_T)).permute(0, 2, 3, 1).numpy()
    return float(np.abs(edited - expected).max()), expected


def test_source_skip_round_trips_through_the_export_and_starts_from_the_source(tmp_path):
    """With config.model.source_skip the x_0 estimate is z_A + UNet(...): the exported PyTorch editor (reading
    multitask.json) edits as the JAX sampler does, and a U-Net whose output is zero returns the source exactly."""
    config = tiny()
    config.model.residual, config.model.source_skip = False, True
    config.diffusion.prediction_type = "sample"
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))
    batch = _eval_batch(method, "blur+grain+colour")
    for zero_output in (False, True):
        if zero_output:  # conv_out all zeros: the U-Net predicts no departure from the source
            model.unet.conv_out.kernel[...] = jnp.zeros_like(model.unet.conv_out.kernel[...])
            model.unet.conv_out.bias[...] = jnp.zeros_like(model.unet.conv_out.bias[...])
        err, expected = _torch_edit_error(method, model, batch, tmp_path / f"export_{zero_output}")
        assert json.load(open(tmp_path / f"export_{zero_output}" / "multitask.json"))["source_skip"] is True
        print(f"source skip, zero U-Net output {zero_output}: torch editor vs JAX sampler, max abs error {err:.2e}")
        assert err < 1e-3
    np.testing.assert_allclose(expected, np.clip(batch["source"], -1, 1), atol=1e-6)


def test_source_start_round_trips_through_the_export_and_a_source_copier_returns_the_source_frame(tmp_path):
    """With config.sampler.source_strength < 1 the sampler starts from the source in the model's frame
    (`start_latent`) re-noised: the exported PyTorch editor (multitask.json's sampler) edits as the JAX sampler
    does, and a model whose x_0 estimate is that start (source skip, zero U-Net output) returns it — the
    untouched source, or for a colour transfer the source carried to the reference's latent statistics."""
    config = tiny()
    config.model.residual, config.model.standardise = False, "colour_reference"
    config.model.source_skip, config.diffusion.prediction_type = True, "sample"
    config.sampler.num_steps, config.sampler.source_strength = 4, 0.5
    config.sampler.blend_known_region = True
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))
    for name in ("inpaint", "blur+grain+colour"):  # with the known region blended in (pure inpainting) and without
        batch = _eval_batch(method, name)
        err, _ = _torch_edit_error(method, model, batch, tmp_path / name)
        assert json.load(open(tmp_path / name / "multitask.json"))["sampler"]["source_strength"] == 0.5
        print(f"source start 0.5, {name}: torch editor vs JAX sampler, max abs error {err:.2e}")
        assert err < 1e-3

    # one step (strength 1/4 of 4): the U-Net's x_0 estimate at the grid's last timestep, from the start re-noised
    # with the sampler's start noise — hand-computed
    method.config.sampler.source_strength = 0.25
    batch, rng = _eval_batch(method, "blur+grain+colour"), jax.random.key(3)
    conditions = model.conditions(batch)
    start = model.start_latent(conditions)
    t = int(denoising_timesteps(config.diffusion.num_train_timesteps, 4, config.sampler.spacing)[-1])
    noisy = q_sample(method.schedule, start, jnp.full((len(start),), t), jax.random.normal(
        jax.random.split(rng)[0], start.shape))
    x0 = model.denoise(noisy, jnp.full((len(start),), t), conditions)
    np.testing.assert_allclose(method.sample(model, batch, rng),
                               np.clip(model.decode(model.edited_latent(x0, conditions.frame)), -1, 1), atol=1e-5)
    model.unet.conv_out.kernel[...] = jnp.zeros_like(model.unet.conv_out.kernel[...])
    model.unet.conv_out.bias[...] = jnp.zeros_like(model.unet.conv_out.bias[...])
    for name in ("blur", "blur+grain+colour"):
        batch = _eval_batch(method, name)
        conditions = model.conditions(batch)
        expected = model.decode(model.edited_latent(model.start_latent(conditions), conditions.frame))
        if name == "blur":  # no colour transfer: the start is the source itself
            np.testing.assert_allclose(expected, batch["source"], atol=1e-5)
        np.testing.assert_allclose(method.sample(model, batch, jax.random.key(1)), np.clip(expected, -1, 1),
                                   atol=1e-5)


@pytest.mark.parametrize("standardise", ["source", "colour_reference"])
def test_standardised_frame_inverts_exactly_and_round_trips_through_the_export(tmp_path, standardise):
    """With config.model.standardise the diffused latent is (z_B - mu) / s, mu and s the per-example,
    per-channel statistics of z_A (or, with "colour_reference", of the reference latent where colour is
    transferred): that latent itself comes out with zero mean and unit std, the edit's inverse recovers z_B,
    the U-Net reads the reference relative to the source's levels, and the exported PyTorch editor edits as the
    JAX sampler does — with the known region blended in (pure inpainting) and without (a combination)."""
    config = tiny()
    config.model.residual, config.model.standardise = False, standardise
    config.diffusion.prediction_type = "sample"
    config.sampler.blend_known_region = True
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))
    min_std = config.model.standardise_min_std
    for name in ("inpaint", "blur+grain+colour"):
        batch = _eval_batch(method, name)
        conditions = model.conditions(batch)
        frame = conditions.frame
        colour = standardise == "colour_reference" and "colour" in name
        framed = model.encode(batch["reference" if colour else "source"])
        standard = np.asarray(model.diffused_latent(framed, frame))
        varied = np.asarray(framed).std(axis=(1, 2)) > min_std  # a flat channel is divided by the floor instead
        np.testing.assert_allclose(standard.mean(axis=(1, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(standard.std(axis=(1, 2))[varied], 1.0, rtol=1e-4)
        target_latent = model.encode(batch["target"])
        np.testing.assert_allclose(model.edited_latent(model.diffused_latent(target_latent, frame), frame),
                                   target_latent, atol=1e-5)
        # the U-Net reads z_A standardised by its own statistics, the reference relative to the source pixels'
        c, (b, h, w, _) = model.autoencoder.latent_channels, conditions.source_latent.shape
        source_latent = np.asarray(conditions.source_latent)
        latent_std = np.maximum(source_latent.std(axis=(1, 2), keepdims=True), min_std)
        np.testing.assert_allclose(conditions.image[..., :c], (source_latent - source_latent.mean(
            axis=(1, 2), keepdims=True)) / latent_std, atol=1e-5)
        source = np.asarray(batch["source"])
        reference = np.asarray(jax.image.resize(batch["reference"], (b, h, w, 3), "linear", antialias=True))
        source_std = np.maximum(source.std(axis=(1, 2), keepdims=True), min_std)
        np.testing.assert_allclose(conditions.image[..., c:c + 3],
                                   (reference - source.mean(axis=(1, 2), keepdims=True)) / source_std, atol=1e-5)
        err, _ = _torch_edit_error(method, model, batch, tmp_path / name)
        spec = json.load(open(tmp_path / name / "multitask.json"))
        assert spec["standardise"] == standardise and spec["standardise_min_std"] == min_std
        print(f"standardise={standardise}, {name}: torch editor vs JAX sampler, max abs error {err:.2e}")
        assert err < 1e-3


def test_edit_mode_writes_edits_at_the_inputs_resolution(trained_workdir, tmp_path):
    """Two different edits of a 40x28 photo (larger than the 16 px tiles: tiled and stitched), written at
    40x28; an image folder with an unreadable file skips it."""
    from PIL import Image
    from skimage import data as skdata

    photo = tmp_path / "photo.png"
    Image.fromarray(skdata.astronaut()[::12, ::12][:28, :40]).save(photo)
    reference = tmp_path / "reference.png"
    Image.fromarray(skdata.coffee()[::20, ::20]).save(reference)
    outputs = {}
    for label, overrides in {"blur": dict(blur=0.5), "colour_grain": dict(reference=str(reference), grain=0.05)}.items():
        config = tiny()
        config.edit.update(input=str(photo), output=str(tmp_path / label), **overrides)
        written = modes.edit(config, trained_workdir)["written"]
        edited = tmp_path / label / "edited" / "photo.png"
        assert str(edited) in written
        outputs[label] = np.asarray(Image.open(edited))
        assert outputs[label].shape == (28, 40, 3)
    assert np.abs(outputs["blur"].astype(int) - outputs["colour_grain"]).mean() > 0


@pytest.mark.parametrize("key, value, message", [
    ("blur", -0.2, "config.edit.blur = -0.2 is invalid; allowed: a number in [0, 1]"),
    ("reference", "missing.png", "config.edit.reference = 'missing.png' is invalid; allowed: '' (off) or an "
                                 "existing image file"),
    ("grain", 0.5, "config.edit.grain = 0.5 is invalid; allowed: a number in [0, 0.1]"),
])
def test_bad_edit_values_are_errors_naming_the_key(trained_workdir, tmp_path, key, value, message):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    config = tiny()
    config.edit.input = str(photo)
    config.edit[key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        modes.edit(config, trained_workdir)


def test_an_edit_with_nothing_on_is_an_error(trained_workdir, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    config = tiny()
    config.edit.input = str(photo)
    with pytest.raises(ValueError, match="no edit is on"):
        modes.edit(config, trained_workdir)


@pytest.mark.parametrize("arg", ["tiny,palette", "tiny,no_labels,mapping_depth=3", "tiny,single=colour"])
def test_comparison_arms_build_and_give_a_finite_loss(arg):
    config = tiny(arg)
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))
    if "palette" in arg:
        assert model.mapping is None and not model.unet.config.has_cross_attention
    else:
        assert len(model.mapping.layers) == config.model.mapping.depth
    batch = {k: jnp.asarray(v) for k, v in method.dummy_batch(2).items()}
    loss, _ = method.loss(model, batch, jax.random.key(0))
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("key, value, message", [
    ("model.conditioning", "film", "config.model.conditioning = 'film' is invalid; allowed: one of"),
    ("sampler.name", "euler", "config.sampler.name = 'euler' is invalid"),
    ("diffusion.loss", "l3", "config.diffusion.loss = 'l3' is invalid; allowed: one of 'l2', 'l1'"),
    ("data.crop_size", 17, "config.data.crop_size = 17 is invalid; allowed: a multiple of"),
    ("model.autoencoder", "vae", "needs config.pretrained"),
    ("model.source_skip", True, "config.model.source_skip = True needs config.diffusion.prediction_type = "
                                "'sample'"),
    ("model.source_skip", True, "config.model.source_skip and config.model.residual are exclusive"),
    ("model.standardise", "source", "config.model.standardise and config.model.residual are exclusive"),
    ("model.standardise", "mean", "config.model.standardise = 'mean' is invalid; allowed: one of "),
    ("sampler.source_strength", 0.0, "config.sampler.source_strength = 0.0 is invalid; allowed: a number in (0, 1]"),
    ("sampler.source_strength", 0.4, "config.sampler.source_strength = 0.4 is invalid; allowed: at least "
                                     "1 / config.sampler.num_steps = 0.5 (it would run no step of 2)"),
])
def test_invalid_config_is_one_clear_error_before_anything_compiles(tmp_path, key, value, message):
    config = tiny()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        modes.train(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_preset_or_modifier_names_what_is_allowed():
    with pytest.raises(ValueError, match="unknown preset 'sd21'; allowed: demo, sd15, tiny"):
        get_config("sd21")
    with pytest.raises(ValueError, match="unknown modifier 'single=rain'"):
        get_config("demo,single=rain")


def test_known_region_is_the_kept_cells_of_pure_inpainting_only():
    config = tiny()
    method = MultitaskMethod(config)
    model = method.init_model(nnx.Rngs(0))  # patch factor 2: 16 px -> 8x8 latent
    mask = np.ones((3, 16, 16, 1), np.float32)
    mask[:, 0, 0] = 0.0  # one hole pixel: its whole 2x2 patch is unknown
    labels = np.array([[0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], np.float32)
    known = method._known_latent_mask(model, {"mask": jnp.asarray(mask), "task_labels": jnp.asarray(labels)})
    assert known.shape == (3, 8, 8, 1)
    assert float(known[0, 0, 0, 0]) == 0.0 and float(known[0].sum()) == 63.0
    assert float(jnp.abs(known[1:]).sum()) == 0.0  # any other edit changes the known pixels too


@pytest.fixture
def tiny_pipeline(tmp_path):
    """A diffusers pipeline directory with a tiny random VAE and U-Net."""
    from diffusers import AutoencoderKL as TorchVAE
    from diffusers import UNet2DConditionModel as TorchUNet

    TorchVAE(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
             norm_num_groups=4).save_pretrained(tmp_path / "vae")
    TorchUNet(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=2,
              norm_num_groups=8).save_pretrained(tmp_path / "unet")
    return tmp_path


def _sd15_tiny(pipeline_dir):
    config = tiny()
    config.pretrained.root = str(pipeline_dir)
    config.model.autoencoder = "vae"
    config.model.unet = {}
    config.model.normalise_strengths = config.model.mask_channel = config.model.residual = False  # the paper's
    config.model.edit_embedding = False
    return config


def test_pretrained_pipeline_directory_builds_the_paper_setup(tiny_pipeline):
    """The sd15 path on a tiny diffusers pipeline directory: VAE + U-Net loaded, conv_in widened to
    4 + 4 + 3 channels with zero weights (the pretrained prediction is kept), mapping tokens of the U-Net's
    cross_attention_dim, a finite L1 loss."""
    from editdiff.interop.diffusers_unet import load_unet

    config = _sd15_tiny(tiny_pipeline)
    method = MultitaskMethod(config)
    model = initial_model(method)
    assert model.autoencoder.downsample_factor == 2
    assert model.unet.config.in_channels == 4 + 4 + 3
    assert model.mapping(jnp.zeros((1, 9))).shape[-1] == 24
    trainable = [path[0] for path, _ in nnx.to_flat_state(nnx.state(model, method.trainable))]
    assert set(trainable) == {"unet", "mapping"}  # the pretrained VAE stays frozen

    pretrained = load_unet(str(tiny_pipeline / "unet"))
    z = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    context = jax.random.normal(jax.random.key(1), (1, 3, 24))
    extra = jax.random.normal(jax.random.key(2), (1, 8, 8, 7))
    before = pretrained(z, jnp.array([5]), context)
    after = model.unet(jnp.concatenate([z, extra], -1), jnp.array([5]), context)
    np.testing.assert_allclose(after, before, atol=1e-5)  # zero weights; only the summation order differs

    # a class embedding for C (model.edit_embedding) starts with a zero output layer: the prediction is kept
    config.model.edit_embedding = True
    with_embedding = initial_model(MultitaskMethod(config))
    labels = jax.random.normal(jax.random.key(3), (1, 9))
    embedded = with_embedding.unet(jnp.concatenate([z, extra], -1), jnp.array([5]), context, class_labels=labels)
    np.testing.assert_allclose(embedded, before, atol=1e-5)
    config.model.edit_embedding = False

    batch = {k: jnp.asarray(v) for k, v in method.dummy_batch(2).items()}
    loss, _ = method.loss(model, batch, jax.random.key(0))
    assert np.isfinite(float(loss))
