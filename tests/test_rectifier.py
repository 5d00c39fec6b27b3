"""The rectifier method (configs/rectifier.py:tiny) on a tiny ldm export (that R starts exactly at the frozen
model is tests/test_rectifier_head.py's): overfitting a batch moves only R and beats the frozen U-Net, a run
writes the reconstruction table (sets reconstruction_N, arms frozen and rectified) and grid; the editing stage
(tiny random CLIP) lowers its loss, warm-starts from the reconstruction run and writes the editing table;
`--mode=edit` writes each arm per photo and skips an unreadable file; bad bases, editing without CLIP and a
warm start from another method's run are clear errors before anything is built; on a pixel DDPM base (a
UNet2DModel DDPMPipeline directory, the paper's backbone) and on a StableDiffusionPipeline directory (the context
the empty prompt's encoding, as transformers computes it) R learns and its export reproduces the JAX prediction."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from PIL import Image

from configs.rectifier import get_config
from editdiff.methods.rectifier import RectifierMethod
from editdiff.train import modes
from editdiff.train.build import initial_model
from editdiff.train.config import validate_config
from editdiff.train.loop import train_and_evaluate
from sd_testing import write_sd_pipeline


def tiny(base_dir: str, arg: str = "tiny", clip_dir: str = ""):
    config = get_config(arg)
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.pretrained.root = base_dir
    if clip_dir:
        config.objective.clip = clip_dir
    return config


def _overfit(config, steps: int, learning_rate: float = 2e-3):
    """(losses, method, trained model) of `steps` Adam steps on one batch with fixed timesteps and noise (it
    can be memorised); asserts the U-Net (and any CLIP tower) stays as it was."""
    method, model = _built(config)
    batch = {k: jnp.asarray(v) for k, v in next(method.train_batches(start_step=0, process_index=0,
                                                                     process_count=1)).items()}
    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    frozen_before = jax.tree.map(np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(method.trainable))))
    optimizer = optax.adam(learning_rate)
    key = jax.random.key(0)

    def loss_of(p, rest):
        merged = nnx.merge(graphdef, p, rest, copy=True)
        return method.loss(merged, batch, key)[0], nnx.state(merged, nnx.BatchStat)

    @jax.jit
    def step(params, rest, opt_state):
        (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(steps):
        params, opt_state, loss = step(params, rest, opt_state)
        losses.append(float(loss))
    trained = nnx.merge(graphdef, params, rest, copy=True)
    jax.tree.map(np.testing.assert_array_equal, frozen_before,
                 jax.tree.map(np.asarray, nnx.state(trained, nnx.All(nnx.Param, nnx.Not(method.trainable)))))
    return losses, method, trained


def _built(config):
    """(method, the model a fresh run starts from)."""
    method = RectifierMethod(config)
    return method, initial_model(method)


def test_overfitting_a_batch_moves_only_r_and_beats_the_frozen_unet(base):
    losses, _, _ = _overfit(tiny(base), 30)
    print(f"rectifier overfitting one batch: loss {losses[0]:.4f} (the frozen U-Net's) -> {losses[-1]:.4f}")
    assert losses[-1] < 0.85 * losses[0]  # mid block only (the tiny preset): 1.36 -> 1.01 measured


def test_the_editing_loss_falls_with_a_tiny_random_clip(base, clip):
    losses, _, _ = _overfit(tiny(base, "tiny,edit", clip), 20, learning_rate=1e-2)
    print(f"rectifier editing loss on one batch: {losses[0]:.4f} -> {losses[-1]:.4f} in 20 Adam steps")
    assert losses[-1] < 0.8 * losses[0]  # 1.762 -> 1.255 measured


@pytest.fixture(scope="module")
def reconstruction_run(base, tmp_path_factory):
    config = tiny(base)
    config.evals.reconstruction.update(num_steps=(1,), num_images=1, batch_size=1, grid_images=1)
    workdir = tmp_path_factory.mktemp("reconstruction")
    train_and_evaluate(config, str(workdir))
    return workdir


def test_a_run_writes_the_reconstruction_table_and_grid(reconstruction_run):
    tmp_path = reconstruction_run
    with open(tmp_path / "eval" / "step_0000002.json") as f:
        written = json.load(f)
    scores = written["scores"]
    assert set(scores) == {"reconstruction_1"} and set(scores["reconstruction_1"]) == {"frozen", "rectified"}
    for values in scores["reconstruction_1"].values():
        assert set(values) == {"L1", "L2", "SSIM", "posterior_gap"}
        assert all(np.isfinite(v) for v in values.values())
    table = (tmp_path / "eval" / "step_0000002.md").read_text()
    assert "| rectified |" in table and "| frozen |" in table
    assert (tmp_path / "reconstruction" / "step_0000002.png").is_file()


def test_a_base_that_is_no_ldm_export_or_of_another_schedule_is_a_clear_error(base, tmp_path):
    config = tiny(str(tmp_path))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config.pretrained.root: .*no ldm.json, no UNet2DModel in unet/ and no Stable Diffusion pipeline .*"
                                         "config.pretrained.root must be"):
        validate_config(config, RectifierMethod)
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp_path / "model_index.json").write_text("{}")  # a pipeline without vae/, text_encoder/, tokenizer/
    with pytest.raises(ValueError, match=r"config.pretrained.vae = '' is invalid here; allowed: a directory .*which "
                                         r"this text base with a vae autoencoder needs"):
        validate_config(config, RectifierMethod)
    config = tiny("")  # the sd15 / ddpm presets as shipped: the base is named first
    with pytest.raises(ValueError, match=r"config.pretrained.root = '' is invalid; allowed: the export directory "
                                         r"of a configs/ldm.py run, a diffusers DDPMPipeline directory or a "
                                         r"StableDiffusionPipeline directory"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.diffusion.prediction_type = "v_prediction"
    with pytest.raises(ValueError, match=r"config.diffusion.prediction_type = 'v_prediction' is invalid; allowed: "
                                         r"the base's 'epsilon'"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.model.rectifier.stem_stride = 3
    with pytest.raises(ValueError, match=r"config.model.rectifier: RectifierConfig: stem_stride=3 must be 1 or 2"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.evals.reconstruction.num_steps = ()
    with pytest.raises(ValueError, match=r"config.evals.reconstruction.num_steps = \(\) is invalid"):
        validate_config(config, RectifierMethod)


def test_an_editing_run_warm_starts_writes_the_editing_table_and_edits_a_folder(base, clip, reconstruction_run,
                                                                                tmp_path):
    config = tiny(base, "tiny,edit", clip)
    config.init_from.workdir = str(reconstruction_run)
    config.train.num_steps = 1
    config.evals.editing.update(num_images=1, batch_size=1, grid_images=1)
    workdir = tmp_path / "edit_run"
    train_and_evaluate(config, str(workdir))
    with open(workdir / "eval" / "step_0000001.json") as f:
        scores = json.load(f)["scores"]
    assert set(scores) == {"photo -> sketch"} and set(scores["photo -> sketch"]) == {"frozen", "edited"}
    for values in scores["photo -> sketch"].values():
        assert set(values) == {"CLIP_direction", "L1", "L2", "SSIM", "CLIP_image"}
        assert all(np.isfinite(v) for v in values.values())
    assert (workdir / "editing" / "step_0000001.png").is_file()

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 27, 3), np.uint8)).save(photos / "sub" / "a.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    config.edit.input = str(photos)
    outcome = modes.edit(config, str(workdir))
    assert list(outcome["skipped"]) == [str(photos / "broken.jpg")]
    written = {os.path.relpath(p, workdir / "edit") for p in outcome["written"]}
    assert written == {os.path.join(label, "sub", "a.png") for label in ("edited", "frozen", "input", "compare")}
    edited = Image.open(workdir / "edit" / "edited" / "sub" / "a.png")
    assert edited.size == (32, 24)  # 27 x 20 at the tiny data's scale (short side 24), on the U-Net's 8 px grid


def test_editing_without_clip_or_from_another_methods_run_is_a_clear_error(base, tmp_path):
    config = tiny(base, "tiny,edit")
    with pytest.raises(ValueError, match=r"config.objective.clip = '' is invalid; allowed: a transformers CLIPModel "
                                         r"directory .* an editing run needs"):
        validate_config(config, RectifierMethod)
    other = tmp_path / "ldm_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"method": "ldm"}))
    config = tiny(base)
    config.init_from.workdir = str(other)
    with pytest.raises(ValueError, match=r"config.init_from.workdir = .*ldm_run' is a 'ldm' run; allowed: a "
                                         r"'rectifier' run"):
        validate_config(config, RectifierMethod)
    config = tiny(base)
    config.evals.reconstruction.kind = "editing"
    with pytest.raises(ValueError, match=r"config.evals.reconstruction.kind = 'editing' is invalid here"):
        validate_config(config, RectifierMethod)


@pytest.fixture(scope="module")
def pixel_base(tmp_path_factory):
    """A diffusers DDPMPipeline directory, the paper's kind of backbone: unet/ a tiny random UNet2DModel (an
    attention block down and up, as google/ddpm-*), scheduler/ the tiny preset's schedule."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers import UNet2DModel as TorchUNet2D

    root = tmp_path_factory.mktemp("ddpm")
    torch.manual_seed(0)
    TorchUNet2D(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8).save_pretrained(root / "unet")
    d = get_config("tiny").diffusion
    DDPMScheduler(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule, beta_start=d.beta_start,
                  beta_end=d.beta_end, prediction_type=d.prediction_type).save_pretrained(root / "scheduler")
    return str(root)


def test_a_pixel_ddpm_base_trains_r_and_exports_the_modulated_unet(pixel_base, tmp_path):
    losses, method, trained = _overfit(tiny(pixel_base), 20, learning_rate=1e-2)
    print(f"rectifier on a pixel UNet2DModel: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 20 Adam steps")
    assert losses[-1] < 0.9 * losses[0]  # 1.149 -> 0.981 measured
    trained.eval()
    written = method.export(trained, str(tmp_path / "export"))
    assert {os.path.relpath(p, tmp_path / "export") for p in written} == {
        "unet", os.path.join("scheduler", "scheduler_config.json"), "rectifier", "rectifier.json"}
    with open(tmp_path / "export" / "rectifier.json") as f:
        summary = json.load(f)
    print(f"pixel base export: PyTorch vs JAX rectified prediction, max abs error {summary['torch_max_abs_error']:.2e}")
    assert summary["unet_class"] == "UNet2DModel" and summary["torch_max_abs_error"] < 1e-4


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    """A StableDiffusionPipeline directory of tiny random parts with the tiny preset's schedule."""
    root = tmp_path_factory.mktemp("sd_pipeline")
    write_sd_pipeline(root, get_config("tiny").diffusion)
    return str(root)


def test_a_stable_diffusion_base_runs_on_the_empty_prompts_encoding_trains_r_and_exports(sd_pipeline, tmp_path):
    import torch
    import transformers

    losses, method, trained = _overfit(tiny(sd_pipeline), 20, learning_rate=1e-2)
    print(f"rectifier on a tiny StableDiffusionPipeline: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 20 Adam steps")
    assert losses[-1] < 0.9 * losses[0]
    tokenizer = transformers.CLIPTokenizer.from_pretrained(os.path.join(sd_pipeline, "tokenizer"))
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = transformers.CLIPTextModel.from_pretrained(os.path.join(sd_pipeline, "text_encoder")).eval()(
            ids).last_hidden_state.numpy()
    error = np.abs(np.asarray(trained.null_context[...]) - expected).max()
    print(f"the context: E_text('') vs transformers CLIPTextModel, max abs error {error:.2e}")
    assert trained.null_context[...].shape == expected.shape and error < 1e-4
    trained.eval()
    written = method.export(trained, str(tmp_path / "export"))
    assert {os.path.relpath(p, tmp_path / "export") for p in written} == {
        "unet", os.path.join("scheduler", "scheduler_config.json"), "rectifier", "rectifier.json", "vae",
        os.path.join("null_context", "null_context.safetensors")}
    with open(tmp_path / "export" / "rectifier.json") as f:
        summary = json.load(f)
    print(f"SD base export: PyTorch vs JAX rectified prediction, max abs error {summary['torch_max_abs_error']:.2e}")
    assert summary["torch_max_abs_error"] < 1e-4


def test_sdedit_and_the_ddpm_reverse_pass_start_both_arms_alike(base):
    method, model = _built(tiny(base))  # R at initialisation: b = 0, so the rectified arm is the frozen one
    model.eval()  # as evaluators and --mode=edit get it: BatchNorm with its running averages
    images = jnp.asarray(next(method.train_batches(start_step=0, process_index=0, process_count=1))["image"][:2])
    run = nnx.jit(lambda m, x, key, sampler, strength: method.reconstruct(m, x, 4, ("frozen", "rectified"),
                                                                           sampler=sampler, strength=strength, key=key),
                  static_argnums=(3, 4))
    outcomes = {(sampler, strength, seed): run(model, images, jax.random.key(seed), sampler, strength)
                for sampler, strength, seed in (("ddim", 0.5, 0), ("ddim", 0.5, 1), ("ddpm", 1.0, 0), ("ddpm", 1.0, 1))}
    for arms in outcomes.values():
        assert arms["frozen"].shape == images.shape
        np.testing.assert_allclose(arms["rectified"], arms["frozen"], atol=1e-5)  # one start, one step noise
    for sampler, strength in (("ddim", 0.5), ("ddpm", 1.0)):  # the noise comes from the seed
        assert np.abs(outcomes[(sampler, strength, 0)]["frozen"] - outcomes[(sampler, strength, 1)]["frozen"]).max() > 1e-3
    config = tiny(base)
    config.edit.strength = 0.1  # int(50 * 0.1) = 5 steps: fine; 0.01 keeps none
    validate_config(config, RectifierMethod)
    config.edit.strength = 0.01
    with pytest.raises(ValueError, match=r"config.edit.strength = 0.01 is invalid; allowed: in \(0, 1\] and keeping"):
        validate_config(config, RectifierMethod)
