"""The visual-prompting method (configs/visual_prompt.py:tiny) on a tiny ldm export: its batches carry the grid with
the answer masked out of the hint; at step 0 the model is the frozen base (the ControlNet's copy of the encoder
and its zero convs); overfitting one batch moves only the ControlNet and lowers the loss; the task-consistency
loss on hand-computed cases; both layouts and the CLIP context run their loss; a run writes the per-task table
with the model, copy-query and shuffled-prompt arms; `--mode=edit` answers a query under a user's example pair;
the export's diffusers ControlNet + U-Net reproduce the JAX prediction; bad input is a clear error before
anything compiles."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from configs.visual_prompt import get_config
from editdiff.config_checks import ConfigError
from editdiff.methods import visual_prompt as vp
from editdiff.train import modes
from editdiff.train.build import initial_model
from editdiff.train.config import validate_config
from editdiff.train.loop import train_and_evaluate
from input_pipeline.visual_tasks import HINT_FILL


def tiny(base_dir: str, arg: str = "tiny", clip_dir: str = ""):
    config = get_config(arg)
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.pretrained.root, config.pretrained.image_encoder = base_dir, clip_dir
    return config


def first_batch(method):
    return {k: jnp.asarray(v) for k, v in next(method.train_batches(start_step=0, process_index=0,
                                                                     process_count=1)).items()}


def test_batches_hold_the_grid_with_the_answer_only_in_the_target(base):
    method = vp.VisualPromptMethod(tiny(base))
    batch = first_batch(method)
    c = method.config.data.cell_size
    assert batch["hint"].shape == batch["target"].shape == (2, 2 * c, 2 * c, 3)
    np.testing.assert_array_equal(batch["hint"][:, c:, c:], HINT_FILL)
    np.testing.assert_array_equal(batch["target"][:, c:, c:], batch["answer"])
    for grid in ("hint", "target"):
        np.testing.assert_array_equal(batch[grid][:, :c, :c], batch["reference_input"])
        np.testing.assert_array_equal(batch[grid][:, :c, c:], batch["reference_output"])
        np.testing.assert_array_equal(batch[grid][:, c:, :c], batch["query"])
    # Resuming at step 3 gives the batch the run saw at step 3.
    run = method.train_batches(start_step=0, process_index=0, process_count=1)
    third = [next(run) for _ in range(4)][3]
    resumed = next(method.train_batches(start_step=3, process_index=0, process_count=1))
    jax.tree.map(np.testing.assert_array_equal, third, resumed)


def test_task_consistency_loss_on_hand_computed_cases():
    x = lambda *v: jnp.asarray([v], jnp.float32)
    zero = x(0.0, 0.0)
    # The query changes exactly as the reference does: a perfect analogy.
    perfect = vp.task_consistency_loss(x(3.0, 5.0), x(1.0, 1.0), x(2.0, 4.0), zero)
    assert float(perfect[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(vp.task_consistency_loss(x(1.0, 0.0), zero, x(0.0, 1.0), zero)[0]) == pytest.approx(1.0)  # orthogonal
    assert float(vp.task_consistency_loss(x(-1.0, 0.0), zero, x(2.0, 0.0), zero)[0]) == pytest.approx(2.0)  # opposite
    assert float(vp.task_consistency_loss(x(1.0, 1.0), zero, x(0.0, 1.0), zero)[0]) == pytest.approx(1 - 2 ** -0.5)
    # (B, h, w, C) embeddings are compared flattened, per example.
    grids = jax.random.normal(jax.random.key(0), (3, 2, 2, 4))
    loss = vp.task_consistency_loss(grids + 1.0, grids, jnp.ones_like(grids), jnp.zeros_like(grids))
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_at_step_0_the_model_is_the_base_and_overfitting_moves_only_the_controlnet(base):
    method = vp.VisualPromptMethod(tiny(base))
    model = initial_model(method)
    batch = first_batch(method)
    # The ControlNet starts as the base U-Net's encoder with zero output convs: the base's prediction exactly.
    z_t = jax.random.normal(jax.random.key(1), model.encode(batch["target"]).shape)
    t = jnp.array([10, 700])
    context = model.context(batch["reference_input"], batch["reference_output"], batch["query"])
    np.testing.assert_array_equal(model.controlnet.conv_in.kernel[...], model.unet.conv_in.kernel[...])
    np.testing.assert_allclose(model.prediction(z_t, t, context, batch["hint"]), model.unet(z_t, t, context), atol=1e-6)

    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    assert {path[0] for path, _ in nnx.to_flat_state(params)} == {"controlnet"}
    frozen_before = jax.tree.map(np.asarray, rest)
    optimizer, key = optax.adam(1e-2), jax.random.key(0)

    def loss_of(p):
        loss, metrics = method.loss(nnx.merge(graphdef, p, rest, copy=True), batch, key)
        return loss, metrics

    @jax.jit
    def step(params, opt_state):
        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    opt_state, losses = optimizer.init(params), []
    for _ in range(30):
        params, opt_state, loss, metrics = step(params, opt_state)
        losses.append(float(loss))
    print(f"visual prompt overfitting one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 Adam steps "
          f"(consistency {float(metrics['consistency_loss']):.3f})")
    assert losses[-1] < 0.7 * losses[0]
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, rest))


@pytest.mark.parametrize("arg", ["tiny,separate", "tiny,clip"])
def test_the_other_layout_and_the_clip_context_train_their_own_parts_and_export(base, clip, arg, tmp_path):
    config = tiny(base, arg, clip)
    config.visual_prompt.noise_loss_region = "answer"
    method = vp.VisualPromptMethod(config)
    model = initial_model(method)
    _, params, _ = nnx.split(model, method.trainable, ...)
    trained = {path[0] for path, _ in nnx.to_flat_state(params)}
    extra = "query_hint_encoder" if "separate" in arg else "context_projection"
    assert trained == {"controlnet", extra}
    batch = first_batch(method)
    loss, metrics = nnx.jit(lambda m, b: method.loss(m, b, jax.random.key(0)))(model, batch)
    assert np.isfinite(float(loss)) and 0.0 <= float(metrics["consistency_loss"]) <= 2.0
    if "clip" in arg:
        context = model.context(batch["reference_input"], batch["reference_output"], batch["query"])
        assert context.shape == (2, 4, model.unet.config.cross_attention_dim)  # the four task-arithmetic tokens
        return
    # The separate layout's export: its query encoder hooked into diffusers' ControlNet reproduces the sum.
    for i, conv in enumerate([*model.controlnet.controlnet_down_blocks, model.query_hint_encoder.conv_out]):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(i), conv.kernel[...].shape))
    written = method.export(model, str(tmp_path))
    with open(written[-1]) as f:
        error = json.load(f)["torch_max_abs_error"]
    print(f"visual prompt export (separate layout, query encoder hooked in PyTorch): max abs error {error:.2e}")
    assert error < 1e-4 and os.path.isfile(tmp_path / "query_hint_encoder" / "config.json")


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("visual_prompt"))
    config = tiny(base)
    train_and_evaluate(config, workdir)
    return config, workdir


def test_a_run_writes_the_task_table_with_copy_query_and_shuffled_prompt_arms(run):
    _, workdir = run
    with open(os.path.join(workdir, "eval", "step_0000002.json")) as f:
        scores = json.load(f)["scores"]
    assert set(scores) == {"colourisation", "deblurring", "contrast (OOD)"}  # the tiny preset's evaluated tasks
    for task, arms in scores.items():
        assert set(arms) == {"model", "copy-query", "shuffled-prompt"}, task
    assert set(scores["colourisation"]["model"]) == {"MSE"}
    assert set(scores["contrast (OOD)"]["model"]) == {"PSNR", "SSIM"}
    # The query returned unchanged is scored against the answer: a blurred query is close to its sharp answer.
    assert scores["deblurring"]["copy-query"]["PSNR"] > 15
    assert os.path.isfile(os.path.join(workdir, "eval", "step_0000002.md"))
    assert Image.open(os.path.join(workdir, "tasks", "step_0000002.png")).size[1] > 3 * 16  # a row per task


def test_edit_answers_a_query_under_the_users_pair_and_the_export_reproduces_the_prediction(run, tmp_path):
    config, workdir = run
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (20, 24)), ("b.png", (16, 16)), ("queries/q.png", (30, 18))):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(path)
    config.edit.update(input=str(tmp_path / "queries"), reference_input=str(tmp_path / "a.png"),
                       reference_output=str(tmp_path / "b.png"))
    modes.run(config, workdir, "edit")
    for label in ("answer", "query", "reference_input", "reference_output", "compare"):
        assert os.path.isfile(os.path.join(workdir, "edit", label, "q.png")), label
    assert Image.open(os.path.join(workdir, "edit", "answer", "q.png")).size == (16, 16)  # the cell

    config.edit.reference_output = str(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="config.edit.reference_output"):
        modes.run(config, workdir, "edit")
    config.edit.reference_output = str(tmp_path / "b.png")

    # A trained ControlNet's residuals are not zero: move them off zero so its path is compared too.
    method, model, _ = modes._restored(config, workdir)
    for i, conv in enumerate([*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block]):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(i), conv.kernel[...].shape))
    written = method.export(model, str(tmp_path / "export"))
    with open(written[-1]) as f:
        exported = json.load(f)
    print(f"visual prompt export: diffusers ControlNet + U-Net vs JAX on a grid, max abs error "
          f"{exported['torch_max_abs_error']:.2e}")
    assert exported["layout"] == "grid" and exported["torch_max_abs_error"] < 1e-4
    assert os.path.isfile(os.path.join(tmp_path, "export", "controlnet", "config.json"))


def test_query_strength_starts_the_sampler_from_the_grid_with_the_query_in_the_answers_place(base, monkeypatch):
    blocks = jnp.array([[1.0, 2.0], [3.0, 0.0]]).repeat(2, 0).repeat(2, 1)[None, :, :, None]  # (1, 4, 4, 1)
    np.testing.assert_array_equal(vp.query_start(blocks)[0, :, :, 0],
                                  np.array([[1.0, 2.0], [3.0, 3.0]]).repeat(2, 0).repeat(2, 1))
    config = tiny(base)
    config.sampler.query_strength = 0.5
    method = vp.VisualPromptMethod(config)
    model = initial_model(method)
    batch = first_batch(method)
    seen = {}

    def sampler(denoise, schedule, x_T, key, **settings):
        seen.update(settings)
        return settings["init_latent"]

    monkeypatch.setattr(vp.samplers, "sampler_by_name", lambda name: sampler)
    answers = vp.draw_answers(model, method.schedule, config.sampler, "grid", batch, jax.random.key(0))
    assert seen["strength"] == 0.5
    np.testing.assert_array_equal(seen["init_latent"], vp.query_start(model.encode(batch["hint"])))
    # The start decoded: its answer cell is the query cell (the patch autoencoder is exact).
    np.testing.assert_allclose(answers, batch["query"], atol=1e-5)


def test_bad_input_is_a_clear_error_before_anything_compiles(base, tmp_path):
    config = tiny(base)
    config.data.cell_size = 17  # not a multiple of the patch autoencoder's factor 2
    with pytest.raises(ConfigError, match="config.data.cell_size = 17"):
        validate_config(config, vp.VisualPromptMethod)

    images, maps = tmp_path / "images", tmp_path / "maps"
    images.mkdir()
    maps.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / f"{name}.png")
    config = tiny(base)
    config.data.source.update(kind="labelled_folder", labelled_images_folder=str(images), labelled_maps_folder="")
    with pytest.raises(ConfigError, match="labelled_maps_folder = ''"):
        validate_config(config, vp.VisualPromptMethod)
    config.data.source.labelled_maps_folder = str(maps)  # a folder without the photos' maps
    with pytest.raises(ConfigError, match="no map in"):
        validate_config(config, vp.VisualPromptMethod)

    config = tiny(base)
    config.data.tasks = ("segmentation",)  # needs a labelled source
    with pytest.raises(ConfigError, match="labelled_folder source"):
        validate_config(config, vp.VisualPromptMethod)
    config = tiny(base)
    config.sampler.query_strength = 0.4  # keeps no step of the tiny preset's two
    with pytest.raises(ConfigError, match=r"config.sampler.query_strength = 0.4 is invalid; allowed: at least 1 / "
                                          r"config.sampler.num_steps = 0.5"):
        validate_config(config, vp.VisualPromptMethod)
    config = tiny(base)
    config.visual_prompt.layout = "side_by_side"
    with pytest.raises(ConfigError, match="config.visual_prompt.layout = 'side_by_side'"):
        validate_config(config, vp.VisualPromptMethod)
