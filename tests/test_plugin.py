"""The Diff-Plugin method (configs/plugin.py:tiny) on a tiny ldm export and a tiny random CLIP tower: overfitting
one batch moves only the plugin (the frozen U-Net, autoencoder, context and CLIP get no update) and beats the
frozen model's loss; on a Stable Diffusion pipeline base it reads the VAE's latents; a run writes the restoration table (set = task, arms input / frozen / plugin, PSNR and
SSIM) and grid; `--mode=edit` writes the plugin's, the frozen model's and the input's picture; the export's
PyTorch prediction (transformers CLIP, TorchTaskPlugin, diffusers U-Net) reproduces the JAX one; chaining runs
the first plugin with the full step count and the later ones with the configured few; bad bases and CLIP
directories are clear errors before anything is built."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from configs.plugin import get_config
from editdiff.interop.random_clip import write_random_clip
from editdiff.methods import plugin as plugin_lib
from editdiff.methods.plugin import PluginMethod
from editdiff.train import modes
from editdiff.train.build import initial_model
from editdiff.train.config import validate_config
from editdiff.train.loop import train_and_evaluate


def tiny(base_dir: str, clip_dir: str, arg: str = "tiny"):
    config = get_config(arg)
    config.mesh.data, config.mesh.fsdp = 1, 1
    config.pretrained.root, config.pretrained.image_encoder = base_dir, clip_dir
    return config


def test_overfitting_a_batch_moves_only_the_plugin_and_beats_the_frozen_model(base, clip):
    method = PluginMethod(tiny(base, clip))
    model = initial_model(method)
    batch = {k: jnp.asarray(v) for k, v in next(method.train_batches(start_step=0, process_index=0,
                                                                     process_count=1)).items()}
    assert batch["image"].shape == batch["source"].shape == (4, 16, 16, 3)
    assert float(jnp.abs(batch["image"] - batch["source"]).mean()) > 0.01  # the input is degraded
    graphdef, params, rest = nnx.split(model, method.trainable, ...)
    assert all(path[0] == "plugins" for path, _ in nnx.to_flat_state(params))
    frozen_before = jax.tree.map(np.asarray, rest)
    optimizer, key = optax.adam(1e-2), jax.random.key(0)

    def loss_of(p):
        return method.loss(nnx.merge(graphdef, p, rest, copy=True), batch, key)[0]

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # The zero convs make the fresh plugin's residuals 0: its first loss is the frozen U-Net's with the prompt.
    opt_state, losses = optimizer.init(params), []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    print(f"plugin overfitting one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 Adam steps")
    assert losses[-1] < 0.75 * losses[0]  # 1.336 -> 0.788 measured (only the first skips and the context move)
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, rest))


@pytest.fixture(scope="module")
def run(base, clip, tmp_path_factory):
    """(config, workdir) of a two-step tiny plugin run with its final restoration evaluation."""
    config = tiny(base, clip)
    workdir = str(tmp_path_factory.mktemp("plugin_run"))
    train_and_evaluate(config, workdir)
    return config, workdir


def test_a_run_writes_the_restoration_table_with_input_frozen_and_plugin_arms(run):
    _, workdir = run
    with open(os.path.join(workdir, "eval", "step_0000002.json")) as f:
        scores = json.load(f)["scores"]
    assert set(scores) == {"derain"} and set(scores["derain"]) == {"input", "frozen", "plugin"}
    for values in scores["derain"].values():
        assert set(values) == {"PSNR", "SSIM"} and all(np.isfinite(v) for v in values.values())
    table = open(os.path.join(workdir, "eval", "step_0000002.md")).read()
    assert "| plugin |" in table and "| frozen |" in table and "| input |" in table
    assert os.path.isfile(os.path.join(workdir, "restoration", "step_0000002.png"))


def test_edit_writes_each_arm_and_the_export_reproduces_the_prediction_in_pytorch(run, tmp_path):
    config, workdir = run
    photo = tmp_path / "photos" / "rainy.png"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 27, 3), np.uint8)).save(photo)
    config.edit.input = str(photo.parent)
    modes.run(config, workdir, "edit")
    for label in ("derain", "frozen", "input", "compare"):
        assert os.path.isfile(os.path.join(workdir, "edit", label, "rainy.png")), label
    assert Image.open(os.path.join(workdir, "edit", "derain", "rainy.png")).size == (32, 24)  # short side 24 (tiny: config.data.resize_short_side)

    # A trained plugin's residuals are not zero: move them off zero so the SCB's path is compared too.
    method, model, _ = modes._restored(config, workdir)
    for i, conv in enumerate(model.plugins["derain"].spatial.zero_convs):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(i), conv.kernel[...].shape))
    written = method.export(model, str(tmp_path / "export"))
    with open(written[-1]) as f:
        exported = json.load(f)
    print(f"plugin export: PyTorch plugin prediction vs JAX, max abs error {exported['torch_max_abs_error']:.2e}")
    assert exported["task"] == "derain" and exported["torch_max_abs_error"] < 1e-4


def test_a_stable_diffusion_base_gives_the_plugin_its_vae_latents_and_the_export_reproduces_it(clip, tmp_path):
    from sd_testing import write_sd_pipeline

    root = tmp_path / "sd"
    write_sd_pipeline(root, get_config("tiny").diffusion)
    method = PluginMethod(tiny(str(root), clip))
    model = initial_model(method)
    source = next(method.train_batches(start_step=0, process_index=0, process_count=1))["source"]
    condition = nnx.jit(lambda m, x: m.encode(x))(model, jnp.asarray(source))
    assert condition.shape == (4, 8, 8, 4) and np.isfinite(np.asarray(condition)).all()  # SD's 4-channel latents
    assert model.null_context[...].shape == (1, 24, 32)  # the empty prompt's encoding (tests/sd_testing.py)
    for i, conv in enumerate(model.plugins["derain"].spatial.zero_convs):
        conv.kernel.set_value(0.1 * jax.random.normal(jax.random.key(i), conv.kernel[...].shape))
    with open(method.export(model, str(tmp_path / "export"))[-1]) as f:
        error = json.load(f)["torch_max_abs_error"]
    print(f"plugin on a tiny StableDiffusionPipeline: export vs JAX prediction, max abs error {error:.2e}")
    assert error < 1e-4


def test_a_chain_runs_the_first_plugin_with_the_full_steps_and_the_later_ones_with_few(monkeypatch):
    calls = []

    def fake_restore(model, schedule, sampler_config, images, key, *, task, start, num_steps=None, strength=1.0):
        calls.append((task, start, num_steps))
        return images + 1.0

    monkeypatch.setattr(plugin_lib, "restore", fake_restore)
    out = plugin_lib.run_chain(None, None, None, jnp.zeros((1, 4, 4, 3)), jax.random.key(0),
                               ["derain", "desnow", "lowlight"], ["input", "input", "noise"], later_steps=3)
    assert calls == [("derain", "input", None), ("desnow", "input", 3), ("lowlight", "noise", 3)]
    assert float(out[0, 0, 0, 0]) == 3.0  # each plugin works on the previous one's output


def test_bad_bases_and_clip_directories_are_clear_errors(base, clip, tmp_path):
    config = tiny(base, str(tmp_path / "no_clip"))
    with pytest.raises(ValueError, match="config.pretrained.image_encoder"):
        validate_config(config, PluginMethod)
    (tmp_path / "not_clip").mkdir()
    config = tiny(base, str(tmp_path / "not_clip"))
    with pytest.raises(ValueError, match="config.pretrained.image_encoder = .* transformers CLIP vision"):
        validate_config(config, PluginMethod)
    config = tiny(str(tmp_path), clip)
    with pytest.raises(ValueError, match="config.pretrained.root"):
        validate_config(config, PluginMethod)
    config = tiny(base, clip)
    config.evals.restoration.num_images = 0
    with pytest.raises(ValueError, match=r"config.evals.restoration.num_images = 0 is invalid"):
        validate_config(config, PluginMethod)
    config = tiny(base, clip)
    config.plugin.task = "sharpen"
    with pytest.raises(ValueError, match="config.plugin.task = 'sharpen' is invalid; allowed: one of 'desnow'"):
        validate_config(config, PluginMethod)


# ---------------------------------------------------------------------------------------------------------
# The Plugin-Selector over two tiny plugin runs.


@pytest.fixture(scope="module")
def desnow_run(base, clip, tmp_path_factory):
    """A second plugin run (desnow), trained one step without evaluation."""
    config = tiny(base, clip, "tiny,desnow")
    config.evals, config.train.num_steps = {}, 1
    workdir = str(tmp_path_factory.mktemp("plugin_desnow"))
    train_and_evaluate(config, workdir)
    return workdir


def selector_config(base, clip, runs: dict):
    from configs.plugin import plugin_runs

    config = tiny(base, clip, "tiny,selector")
    plugin_runs(config, runs)
    return config


def test_the_selector_trains_over_frozen_plugins_writes_its_table_and_edits_by_instruction(
        base, clip, run, desnow_run, tmp_path, caplog):
    from editdiff.methods.plugin_selector import SelectorMethod, selection_scores

    config = selector_config(base, clip, {"derain": run[1], "desnow": desnow_run})
    config.train.num_steps = config.train.checkpoint_every = 20
    workdir = str(tmp_path / "selector")
    train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "step_0000020.json")) as f:
        scores = json.load(f)["scores"]
    assert set(scores) == {"held-out phrasings", "training phrasings"}
    for by_arm in scores.values():
        assert set(by_arm) == {"selector", "untrained"}
        assert set(by_arm["selector"]) == {"ZTA", "mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"}
    trained, untrained = scores["training phrasings"]["selector"], scores["training phrasings"]["untrained"]
    print(f"selector, training phrasings: ZTA {untrained['ZTA']:.2f} -> {trained['ZTA']:.2f}, "
          f"mAP {untrained['mAP']:.2f} -> {trained['mAP']:.2f}; held-out: "
          f"ZTA {scores['held-out phrasings']['selector']['ZTA']:.2f}")
    assert trained["mAP"] > untrained["mAP"] and trained["ZTA"] > untrained["ZTA"]

    # The frozen plugins are the plugin runs' own (EMA) parameters.
    method, restored, _ = modes._restored(config, workdir)
    assert isinstance(method, SelectorMethod)
    from editdiff.train.warm_start import read_run_parameters

    _, saved = read_run_parameters(run[1], step=None, params="ema", method="plugin", key="test")
    kernel = "plugins.derain.prompt.out.kernel"
    np.testing.assert_array_equal(np.asarray(restored.plugins["derain"].prompt.out.kernel[...]), saved[kernel])

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), np.uint8)).save(photo)
    config.edit.update(input=str(photo), instruction="remove the rain")
    modes.run(config, workdir, "edit")
    with open(os.path.join(workdir, "edit", "summary", "photo.json")) as f:
        summary = json.load(f)
    assert set(summary["scores"]) == {"derain", "desnow"} and summary["instruction"] == "remove the rain"
    chain = summary["chain"]
    assert chain == [t for t, s in sorted(summary["scores"].items(), key=lambda p: -p[1]) if s >= 0.0]
    assert os.path.isfile(os.path.join(workdir, "edit", "edited" if chain else "input", "photo.png"))

    # An instruction no plugin matches (threshold above every score) edits nothing and says so.
    method.config.selector.threshold = 1.0
    with caplog.at_level("WARNING"):
        results = method.edit(restored, np.asarray(Image.open(photo), np.float32) / 127.5 - 1.0)
    assert "no plugin matches 'remove the rain'" in caplog.text
    assert list(results) == ["input"] and method.edit_summary()["chain"] == []

    # The heads' export: torch Linear layers give the JAX selection scores.
    import torch
    from safetensors.numpy import load_file

    written = method.export(restored, str(tmp_path / "export"))
    heads = load_file(os.path.join(written[0], "plugin_selector.safetensors"))
    rng = np.random.default_rng(2)
    texts = rng.normal(size=(3, method.text_width))
    prompts = rng.normal(size=(2, 2, 1, restored.selector.visual_projection.in_features))  # (B, P, 1, D) pooled

    ours = np.asarray(selection_scores(restored.selector, jnp.asarray(texts, jnp.float32),
                                       jnp.asarray(prompts, jnp.float32)))
    linear = lambda name, x: torch.nn.functional.linear(torch.tensor(x, dtype=torch.float32),
                                                        torch.from_numpy(heads[f"{name}.weight"]),
                                                        torch.from_numpy(heads[f"{name}.bias"]))
    q = torch.nn.functional.normalize(linear("text_projection", texts), dim=-1)
    v = torch.nn.functional.normalize(linear("visual_projection", prompts[:, :, 0]), dim=-1)
    theirs = torch.einsum("te,bpe->tbp", q, v).numpy()
    print(f"selector heads export: scores in PyTorch vs JAX, max abs error {np.abs(theirs - ours).max():.2e}")
    assert np.abs(theirs - ours).max() < 1e-5


def test_selector_config_mistakes_are_clear_errors(base, clip, run, tmp_path):
    from editdiff.methods.plugin_selector import SelectorMethod

    config = selector_config(base, clip, {"derain": run[1], "desnow": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match=r"config.frozen_from.desnow.workdir = .*missing.* is invalid; allowed: the "
                                         r"workdir of a trained desnow plugin run"):
        validate_config(config, SelectorMethod)
    config = selector_config(base, clip, {"derain": run[1], "desnow": run[1]})
    with pytest.raises(ValueError, match="is a 'plugin' run of task 'derain'; allowed: a 'plugin' run of task 'desnow'"):
        validate_config(config, SelectorMethod)
    narrower = write_random_clip(tmp_path / "narrower_clip", image_size=32, vision_width=32)
    config = selector_config(base, narrower, {"derain": run[1], "desnow": run[1]})
    with pytest.raises(ValueError, match="has width 32; the derain plugin's prompt branch .* reads width 64"):
        validate_config(config, SelectorMethod)
