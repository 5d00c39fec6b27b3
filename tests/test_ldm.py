"""Plain latent diffusion (configs/ldm.py:tiny): the method learns, a run writes checkpoints, sample grids and
FID tables, the export loads in diffusers with the same noise prediction and serves as another run's
`pretrained.root`, bad configs fail before anything compiles, the text-conditioned path (frozen CLIP text
encoder, frozen VAE) runs and exports a StableDiffusionPipeline, the caption-folder source."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from PIL import Image

from configs.ldm import get_config
from editdiff.methods.ldm import LDMMethod, load_null_context
from editdiff.train import mesh as mesh_lib
from editdiff.train import modes
from editdiff.train.build import initial_model, load_trained_model
from editdiff.train.loop import train_and_evaluate
from inception_testing import write_random_inception_file
from sd_testing import write_sd_parts
from input_pipeline.captions import CaptionFolderSource, ImageBatches, default_image_data_config


def tiny(arg: str = "tiny"):
    config = get_config(arg)
    config.mesh.data, config.mesh.fsdp = 1, 1
    return config


def _torch_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """pytorch-fid's file name holding random values (the real one is not here)."""
    from eval.weights import INCEPTION_FILE

    directory = tmp_path_factory.mktemp("inception")
    write_random_inception_file(directory / INCEPTION_FILE[0])
    return str(directory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, inception_weights):
    """Two steps of the tiny preset through train_and_evaluate, with the sample grid and FID at the end."""
    config = tiny()
    config.evals.fid.inception_weights = inception_weights
    workdir = str(tmp_path_factory.mktemp("ldm"))
    outcome = train_and_evaluate(config, workdir)
    assert outcome.step == 2 and not outcome.preempted
    return config, workdir


def test_loss_falls_when_overfitting_one_batch():
    config = tiny()
    method = LDMMethod(config)
    model = method.init_model(nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in next(method.train_batches(start_step=0, process_index=0,
                                                                     process_count=1)).items()}
    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    optimizer = optax.adam(2e-3)
    key = jax.random.key(0)  # the same timesteps and noise every step: the batch can be memorised

    @jax.jit
    def step(params, opt_state):
        loss_of = lambda p: method.loss(nnx.merge(graphdef, p, rest), batch, key)[0]  # noqa: E731
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    print(f"overfitting one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 40 Adam steps")
    assert losses[-1] < 0.5 * losses[0]


def test_train_writes_checkpoints_sample_grid_and_fid_table(trained):
    _, workdir = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    grid = Image.open(os.path.join(workdir, "samples", "step_0000002.png"))
    assert grid.size[0] > 3 * 16 and grid.size[1] > 2 * 16  # a training crop + 2 samples per row, 2 rows
    with open(os.path.join(workdir, "eval", "step_0000002.json")) as f:
        written = json.load(f)
    assert written["step"] == 2 and set(written["scores"]) == {"heldout"}
    arms = written["scores"]["heldout"]
    assert set(arms) == {"model", "train_images"}
    assert all(set(values) == {"FID", "KIDx100"} and all(np.isfinite(v) for v in values.values())
               for values in arms.values())
    table = open(os.path.join(workdir, "eval", "step_0000002.md")).read()
    assert "| train_images |" in table and "heldout FID↓" in table


def test_export_loads_in_diffusers_with_the_same_noise_prediction(trained):
    from diffusers import DDIMScheduler
    from diffusers import UNet2DConditionModel as TorchUNet

    config, workdir = trained
    written = modes.export(config, workdir)
    export_dir = os.path.join(workdir, "export")
    assert {os.path.relpath(p, export_dir) for p in written} == {
        "unet", os.path.join("scheduler", "scheduler_config.json"),
        os.path.join("null_context", "null_context.safetensors"), "ldm.json"}

    method = LDMMethod(config)
    model, _ = load_trained_model(config, workdir, method, mesh_lib.create_mesh(config.mesh))
    z_t = jax.random.normal(jax.random.key(3), (2, 8, 8, 12))
    t = jnp.array([10, 900], jnp.int32)
    expected = np.asarray(model.denoise(z_t, t, model.context(2)))

    unet = TorchUNet.from_pretrained(os.path.join(export_dir, "unet")).eval()
    null_context = torch.from_numpy(load_null_context(export_dir)).repeat(2, 1, 1)
    with torch.no_grad():
        prediction = unet(_torch_nchw(z_t), torch.from_numpy(np.array(t)), null_context).sample
    error = np.abs(prediction.permute(0, 2, 3, 1).numpy() - expected).max()
    print(f"exported diffusers U-Net + null context vs JAX noise prediction: max abs error {error:.2e}")
    assert error < 1e-4

    scheduler = DDIMScheduler.from_pretrained(os.path.join(export_dir, "scheduler"))
    np.testing.assert_array_equal(scheduler.alphas_cumprod.numpy(), np.asarray(method.schedule.alphas_cumprod))
    assert scheduler.config.prediction_type == config.diffusion.prediction_type

    # The export is a base: another run with pretrained.root = export starts from the trained U-Net and context.
    base = tiny()
    base.pretrained.root = export_dir
    base.model.unet = {}
    from editdiff.train.config import validate_config

    validate_config(base, LDMMethod)
    restarted = initial_model(LDMMethod(base))
    again = np.asarray(restarted.denoise(z_t, t, restarted.context(2)))
    np.testing.assert_allclose(again, expected, atol=1e-5)
    with open(os.path.join(export_dir, "ldm.json")) as f:
        assert json.load(f)["autoencoder"] == {"kind": "patch", "factor": 2}


@pytest.mark.parametrize("key, value, message", [
    ("model.conditioning", "class", "config.model.conditioning = 'class' is invalid; allowed: one of "
                                    "'unconditional', 'text'"),
    ("diffusion.prediction_type", "score", "config.diffusion.prediction_type = 'score' is invalid; allowed: one of"),
    ("sampler.num_steps", 5000, "config.sampler.num_steps = 5000 is invalid; allowed: at most "
                                "config.diffusion.num_train_timesteps = 1000"),
    ("data.crop_size", 17, "config.data.crop_size = 17 is invalid; allowed: a multiple of the autoencoder's "
                           "downsampling factor 2"),
    ("model.autoencoder", "vae", "config.pretrained.vae = '' is invalid here"),
    ("model.unet.block_out_chanels", (16, 32), "config.model.unet: UNetConfig.__init__() got an unexpected "
                                               "keyword argument 'block_out_chanels'"),
    ("evals.samples.num_rows", 0, "config.evals.samples.num_rows = 0 is invalid; allowed: an integer >= 1"),
    ("evals.fid.inception_weights", "/nonexistent", "config.evals.fid.inception_weights = '/nonexistent' is "
                                                    "invalid; allowed: '' (off) or a directory holding"),
    ("sampler.guidance_scale", 3.0, "config.sampler.guidance_scale = 3.0 is invalid; allowed: 1.0 for an "
                                    "unconditional model"),
])
def test_invalid_config_is_one_clear_error_before_anything_is_built(tmp_path, monkeypatch, key, value, message):
    def built(*args, **kwargs):
        raise AssertionError("the method was built before the config was validated")

    monkeypatch.setattr(LDMMethod, "__init__", built)
    config = tiny()
    *parents, name = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_main_reports_an_invalid_config_in_its_own_words_and_writes_nothing(tmp_path):
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "main.py", "--config", "configs/ldm.py:tiny",
                             "--config.train.num_steps=-1", "--workdir", str(tmp_path / "run")],
                            cwd=repository, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "config.train.num_steps = -1 is invalid; allowed: an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "run")


def test_unknown_preset_or_modifier_names_what_is_allowed():
    with pytest.raises(ValueError, match="unknown preset 'sd21'; allowed: demo, sd15, tiny"):
        get_config("sd21")
    with pytest.raises(ValueError, match="unknown modifier 'palette'; allowed: text, unconditional"):
        get_config("demo,palette")


# ---------------------------------------------------------------------------------------------------------
# Text-conditioned, with a frozen VAE: tiny random transformers / diffusers parts written here.


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    """A Stable-Diffusion-like directory: text_encoder/, tokenizer/, vae/ (tests/sd_testing.py)."""
    root = tmp_path_factory.mktemp("sd_parts")
    write_sd_parts(root)
    return root


def test_text_conditioned_vae_run_trains_samples_and_exports_a_pipeline(sd_parts, tmp_path):
    import transformers
    from diffusers import StableDiffusionPipeline

    config = tiny("tiny,text")
    config.pretrained.root = str(sd_parts)
    config.model.autoencoder = "vae"
    config.sampler.guidance_scale = 2.0
    config.train.num_steps = 1
    del config.evals["fid"]
    config.evals.samples.update(num_rows=1, num_columns=1)
    method = LDMMethod(config)

    # The frozen text encoder reads SD's projection-free CLIPTextModel and matches transformers.
    model = initial_model(method)
    ids = method.tokenize(["a photo of a cat", ""])
    assert ids.shape == (2, 24) and ids.dtype == np.int32
    reference = transformers.CLIPTextModel.from_pretrained(sd_parts / "text_encoder").eval()
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    error = np.abs(np.asarray(model.text_encoder(jnp.asarray(ids))) - theirs).max()
    print(f"frozen CLIP text encoder vs transformers CLIPTextModel: max abs error {error:.2e}")
    assert error < 1e-4
    assert model.unet.config.cross_attention_dim == 32  # derived from the text encoder
    trainable = {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, method.trainable))}
    assert trainable == {"unet"}  # VAE and text encoder stay frozen

    workdir = str(tmp_path / "run")
    assert train_and_evaluate(config, workdir, method=method).step == 1
    assert os.path.isfile(os.path.join(workdir, "samples", "step_0000001.png"))

    written = modes.export(config, workdir)
    export_dir = os.path.join(workdir, "export")
    assert {os.path.relpath(p, export_dir) for p in written} == {
        "unet", "vae", "text_encoder", "tokenizer", os.path.join("scheduler", "scheduler_config.json"),
        "model_index.json", "ldm.json"}
    pipeline = StableDiffusionPipeline.from_pretrained(export_dir)
    image = pipeline("a photo of a cat", num_inference_steps=2, height=16, width=16, guidance_scale=2.0,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


# ---------------------------------------------------------------------------------------------------------
# The caption-folder source and the image batches.


def _solid(path, colour):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(path)


def test_caption_folder_batches_keep_each_caption_with_its_image(tmp_path):
    colours = {"a.png": (255, 0, 0), "sub/b.png": (0, 255, 0), "sub/d.png": (0, 0, 255), "c.png": (9, 9, 9)}
    for name, colour in colours.items():
        _solid(tmp_path / name, colour)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "red"}) + "\n"
                                             + json.dumps({"file_name": "sub/d.png", "text": "blue"}) + "\n")
    (tmp_path / "sub" / "b.txt").write_text("green\nsecond line is ignored\n")

    source = CaptionFolderSource(str(tmp_path), "train", heldout_per_mille=0)
    assert source.ids == ["a.png", os.path.join("sub", "b.png"), os.path.join("sub", "d.png")]
    assert source.captions == ["red", "green", "blue"]
    assert list(source.skipped.as_dict()) == [str(tmp_path / "c.png")]  # no caption

    cfg = default_image_data_config()
    cfg.source.kind, cfg.source.folder, cfg.source.heldout_per_mille = "folder", str(tmp_path), 0
    cfg.crop_size, cfg.resize_short_side, cfg.batch_size = 16, 0, 6
    channel = {"red": 0, "green": 1, "blue": 2}
    tokenize = lambda texts: np.array([[channel[t]] for t in texts], np.int32)  # noqa: E731
    batches = ImageBatches(cfg, tokenize=tokenize)
    first, second = next(batches), next(batches)
    assert first["image"].shape == (6, 16, 16, 3) and first["input_ids"].shape == (6, 1)
    for batch in (first, second):
        brightest = batch["image"].mean(axis=(1, 2)).argmax(axis=-1)
        np.testing.assert_array_equal(brightest, batch["input_ids"][:, 0])  # the caption follows its image
    resumed = next(ImageBatches(cfg, tokenize=tokenize, start_step=1))
    np.testing.assert_array_equal(resumed["image"], second["image"])  # batch k is a function of (seed, k)
    halves = [next(ImageBatches(cfg, tokenize=tokenize, start_step=1, process_index=p, process_count=2))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["input_ids"] for h in halves]), second["input_ids"])


def test_edit_mode_on_a_method_without_an_edit_command_is_a_clear_error_before_anything_is_read(tmp_path):
    config = tiny()
    config.edit.input = str(tmp_path / "photo.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(config.edit.input)
    with pytest.raises(ValueError, match=r"--mode=edit: the 'ldm' method has no edit command; allowed modes: train"):
        modes.edit(config, str(tmp_path / "no_such_workdir"))
