"""The Plugin-Selector of Diff-Plugin (seed 002 §3.4, METHODS.md §3): which trained plugins a text instruction
asks for, trained contrastively over the frozen plugins' visual prompts — the part the authors never released.

The model: the plugin model's frozen parts (editdiff/methods/plugin.py: the base, the CLIP vision tower), the
plugins of `config.selector.tasks`, frozen, each loaded from its own plugin run (`config.frozen_from.TASK`,
source and target `plugins.TASK`), and the trainable heads VP, TP and the logit scale
(editdiff/heads/plugin_selector.py). An instruction's pooled, projected CLIP text embedding EncT(T) comes from
the frozen CLIP text tower of `config.selector.text_encoder` (a transformers CLIPModel directory with its
tokenizer; "" = config.pretrained.image_encoder, which then holds both towers, as CLIP ViT-L/14 does). It is
computed outside the jitted model: once for the instruction bank (input_pipeline/instructions.py), whose
training phrasings' embeddings are a frozen value of the model (`instruction_embeddings` (M, text_width)), and
once per `--mode=edit` instruction.

Training (eq. 6), per example: a task k drawn uniformly from the selector's tasks, the crop degraded by k with
its own seed, the anchor v = VP(maxpool F^p_k) of the example's own plugin (the pseudo label), and K = N + 1
instructions: a training phrasing of k (the positive) and N = `num_negatives` (7) phrasings of the other tasks,
drawn with replacement. Loss: `contrastive_loss` (the negatives-only denominator eq. 6 writes;
`include_positive` gives InfoNCE's).

Batch fields: `image`, `source` (B, H, W, 3) in [-1, 1] (the clean crop and its degraded version), `task` (B,)
int32 (index into config.selector.tasks), `instructions` (B, K) int32 (rows of the training phrasings' table,
the positive first), `positive` (B, K) bool.

Evaluator `selection`: `num_images` held-out crops degraded by each task, asked with each phrasing of that task
of a split; per (image, phrasing) the scores s_p of every plugin, labelled with the one task; ZTA, mAP, CP, CR,
CF1, OP, OR, OF1 (eval/multilabel.py) at theta = config.selector.threshold. Sets `held-out phrasings` and
`training phrasings`; arms `selector` (the trained heads) and `untrained` (freshly initialised heads of the same
sizes, from the entry's seed: what the architecture scores before training).

`--mode=edit`: `config.edit.instruction` -> every plugin's score on the photo; the plugins scoring >= theta run
in sequence, highest first (the first with the sampler's steps, the later ones with
`config.selector.later_steps`, the authors' 3); none selected: the log says so and the photo comes back
unedited. `config.edit.plugins` (tasks) runs that chain instead of the selection. OUTPUT/summary/NAME.json holds
the instruction, every plugin's score and the chain run. `--mode=export`: selector/ (the heads as safetensors
under torch Linear names) and selector.json (tasks, threshold, sizes).

Diff-Plugin selects by s >= theta (eq. 5) and counts s > theta in its metrics; both as written. Its inference
code also adds a "null" instruction row; not done here: an instruction that matches nothing scores below theta.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from flax import nnx

from editdiff import config_checks as checks
from editdiff.heads.plugin_selector import PluginSelector, contrastive_loss, selected_plugins
from editdiff.interop import transformers_clip
from editdiff.interop.torch_io import CheckpointError
from editdiff.methods import latents as latents_lib
from editdiff.methods import plugin as plugin_lib
from editdiff.methods.base import Batch, Evaluator, FlatState, Method
from editdiff.methods.plugin import INFERENCE_CHECKS, TASKS, PluginModel, PluginParts, start_for
from editdiff.methods.reports import ModelFunction, chunks, write_scores
from editdiff.pretrained import pretrained_path
from editdiff.workdirs import is_run_workdir, read_saved_config
from input_pipeline import captions as data
from input_pipeline import instructions as bank
from input_pipeline.degradations import degrade
from input_pipeline.randomness import purpose_seed


# ---------------------------------------------------------------------------------------------------------
# Config.


def default_selector_config(tasks: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`config.selector` (module docstring): embed_dim 0 = the U-Net's context width (the authors' 768 -> 768)."""
    return ml_collections.ConfigDict(dict(tasks=tuple(tasks), text_encoder="", embed_dim=0, num_negatives=7,
                                          include_positive=False, threshold=0.0, later_steps=3))


def default_edit_config() -> ml_collections.ConfigDict:
    """`config.edit`: the instruction, an explicit chain of tasks (() = the selector's choice), the noise seed."""
    return ml_collections.ConfigDict(dict(input="", output="", seed=0, instruction="", plugins=()))


_SELECTION_DEFAULTS = dict(num_images=4, batch_size=8, seed=0)


def selection_entry(every: int = 0, **settings) -> ml_collections.ConfigDict:
    """A `config.evals.NAME` entry of kind "selection" with its defaults."""
    return ml_collections.ConfigDict(dict(kind="selection", every=every, **{**_SELECTION_DEFAULTS, **settings}))


_TASKS: checks.Check = ((lambda v: isinstance(v, (tuple, list)) and len(v) >= 2 and len(set(v)) == len(v)
                         and all(t in TASKS for t in v)),
                        f"a tuple of at least two different tasks of {', '.join(TASKS)}")
_SELECTOR_CHECKS = {"tasks": _TASKS, "text_encoder": checks.string(), "embed_dim": checks.int_at_least(0),
                    "num_negatives": checks.int_at_least(1), "include_positive": checks.BOOLEAN,
                    "threshold": checks.number_in(-1, 1), "later_steps": checks.int_at_least(1)}
_SELECTION_CHECKS = {"kind": checks.ANY, "every": checks.ANY, "num_images": checks.int_at_least(1),
                     "batch_size": checks.int_at_least(1), "seed": checks.int_at_least(0)}
_EDIT_CHECKS = {"input": checks.ANY, "output": checks.ANY, "seed": checks.int_at_least(0),
                "instruction": checks.string(),
                "plugins": ((lambda v: isinstance(v, (tuple, list)) and all(isinstance(t, str) for t in v)),
                            "a tuple of task names (() = the selector's choice)")}


def text_encoder_directory(config: ml_collections.ConfigDict) -> str:
    """The CLIPModel directory of the instruction encoder (config.selector.text_encoder, else the vision one's)."""
    return config.selector.text_encoder or pretrained_path(config, "image_encoder")


def _text_encoder_rule(config) -> list[str]:
    directory = text_encoder_directory(config)
    try:
        transformers_clip.load_clip_tokenizer(directory)
        transformers_clip.read_text_config(directory)
        return []
    except (CheckpointError, OSError, ValueError, KeyError) as error:
        return [f"config.selector.text_encoder = {config.selector.text_encoder!r} is invalid; allowed: a "
                f"transformers CLIPModel directory with its tokenizer ('' = config.pretrained.image_encoder, which "
                f"then needs both towers): {directory!r} gives {error}"]


def _plugin_runs_rule(config) -> list[str]:
    """Each task has a frozen_from entry into plugins.TASK from a plugin run of that task, trained on this base
    and on a CLIP tower of this width (its prompt branch reads the tower's tokens)."""
    problems = []
    width = transformers_clip.read_vision_config(pretrained_path(config, "image_encoder")).hidden_size
    root = os.path.abspath(config.pretrained.root)
    for task in config.selector.tasks:
        entry = config.frozen_from.get(task)
        if entry is None or entry.target != f"plugins.{task}":
            problems.append(f"config.frozen_from.{task} is missing; allowed: an entry loading plugins.{task} from the "
                            f"{task} plugin run (configs/plugin.py's plugin_runs(config, {{task: workdir}}) sets it)")
            continue
        if not (entry.workdir and is_run_workdir(entry.workdir)):
            problems.append(f"config.frozen_from.{task}.workdir = {entry.workdir!r} is invalid; allowed: the workdir "
                            f"of a trained {task} plugin run (config.json and checkpoints/: python main.py --config "
                            f"configs/plugin.py:demo,{task} --workdir DIR)")
            continue
        saved = read_saved_config(entry.workdir)
        if saved.get("method") != "plugin" or saved.get("plugin", {}).get("task") != task:
            problems.append(f"config.frozen_from.{task}.workdir = {entry.workdir!r} is a {saved.get('method')!r} run "
                            f"of task {saved.get('plugin', {}).get('task')!r}; allowed: a 'plugin' run of task {task!r}")
            continue
        if os.path.abspath(saved["pretrained"]["root"]) != root:
            problems.append(f"config.frozen_from.{task}.workdir = {entry.workdir!r} was trained on the base "
                            f"{saved['pretrained']['root']!r}; allowed: a plugin of this run's base "
                            f"config.pretrained.root = {config.pretrained.root!r}")
        clip = saved["pretrained"].get("image_encoder", "")
        try:
            theirs = transformers_clip.read_vision_config(clip).hidden_size
        except (CheckpointError, OSError, ValueError, KeyError):
            continue  # its CLIP directory is gone: the checkpoint's shapes are checked when it is loaded
        if theirs != width:
            problems.append(f"config.pretrained.image_encoder = {config.pretrained.image_encoder!r} has width "
                            f"{width}; the {task} plugin's prompt branch ({entry.workdir}) reads width {theirs} "
                            f"(its CLIP {clip!r}); allowed: a CLIP vision tower of width {theirs}")
    return problems


# ---------------------------------------------------------------------------------------------------------
# The model.


class SelectorModel(PluginModel):
    """The plugin model with frozen plugins, the trainable selector heads and the frozen training phrasings'
    text embeddings (M, text_width)."""

    def __init__(self, *parts, selector: PluginSelector, instruction_embeddings: nnx.Param):
        super().__init__(*parts)
        self.selector = selector
        self.instruction_embeddings = instruction_embeddings

    def pooled_prompts(self, images: jax.Array) -> jax.Array:
        """(B, P, 1, context_dim): every plugin's visual prompt F^p of (B, H, W, 3) images, max-pooled over its
        tokens (what VP reads), plugins in their order."""
        tokens = self.clip_tokens(images)
        return jnp.stack([jnp.max(plugin.prompt(tokens), axis=-2, keepdims=True) for plugin in self.plugins.values()],
                         axis=1)


def selection_scores(heads: PluginSelector, texts: jax.Array, prompts: jax.Array) -> jax.Array:
    """(T, B, P) cos(v_p, q) for T instruction embeddings (T, text_width) and B images' pooled prompts (B, P, 1, D)."""
    return jnp.einsum("te,bpe->tbp", heads.text_embeddings(texts), heads.visual_embeddings(prompts))


# ---------------------------------------------------------------------------------------------------------
# The method.


class SelectorMethod(Method):
    """Contrastive training of the Plugin-Selector's heads over frozen plugins (module docstring)."""

    evaluator_kinds = ("selection",)

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        sections = [checks.Section("selector", _SELECTOR_CHECKS), checks.Section("plugin", INFERENCE_CHECKS),
                    *[s for s in plugin_lib.base_sections(config) if s.prefix != "edit"],
                    checks.Section("edit", _EDIT_CHECKS)]
        rules = ([] if any(s.problems(config) for s in sections)
                 else [*plugin_lib.base_rules(), _text_encoder_rule, _plugin_runs_rule,
                       plugin_lib.evals_rule("selection", _SELECTION_CHECKS)])
        return [*sections, checks.Section("", {}, closed=False, rules=tuple(rules))]

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.parts = PluginParts(config)
        self.schedule = self.parts.schedule
        self.tasks = tuple(config.selector.tasks)
        self.phrasings = [(k, text) for k, task in enumerate(self.tasks) for text in bank.phrasings(task, "train")]
        text_config = transformers_clip.read_text_config(text_encoder_directory(config))
        self.text_width = text_config.projection_dim
        self.embed_dim = config.selector.embed_dim or self.parts.plugin_config.context_dim
        self._chains: dict[tuple[str, ...], ModelFunction] = {}
        self._scores = ModelFunction(lambda model, texts, images: selection_scores(
            model.selector, texts, model.pooled_prompts(images)))
        self.last_edit: dict | None = None

    def heads(self, rngs: nnx.Rngs) -> PluginSelector:
        return PluginSelector(self.parts.plugin_config.context_dim, self.text_width, self.embed_dim, rngs=rngs)

    def init_model(self, rngs: nnx.Rngs) -> SelectorModel:
        table = nnx.Param(jnp.zeros((len(self.phrasings), self.text_width), jnp.float32))
        return self.parts.model(rngs, self.tasks, SelectorModel, selector=self.heads(rngs),
                                instruction_embeddings=table)

    def pretrained_state(self) -> FlatState:
        return {**self.parts.frozen_state(),
                ("instruction_embeddings",): self.embed_texts([text for _, text in self.phrasings])}

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.PathContains("selector"))

    @functools.cached_property
    def _text_encoder(self):
        """(jitted EncT: (N, L) ids -> (N, text_width), tokenizer, L) of the frozen CLIP text tower."""
        directory = text_encoder_directory(self.config)
        model = transformers_clip.load_clip_text(directory)
        encode = nnx.jit(lambda m, ids: m(ids).text_embeds)
        return functools.partial(encode, model), transformers_clip.load_clip_tokenizer(directory), \
            model.config.max_position_embeddings

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """EncT (N, text_width) float32: the pooled, projected CLIP text embeddings of `texts`."""
        encode, tokenizer, length = self._text_encoder
        return np.asarray(encode(jnp.asarray(transformers_clip.tokenize(tokenizer, texts, length))), np.float32)

    # -- data -----------------------------------------------------------------------------------------

    def _degrade_and_ask(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """For one clean crop (H, W, 3) in [0, 1] and its seed: a task k drawn uniformly, the crop degraded by k,
        and K = 1 + num_negatives phrasing rows (the positive of k first, then phrasings of other tasks)."""
        task_of = np.array([k for k, _ in self.phrasings], np.int32)
        counts = tf.constant(np.bincount(task_of, minlength=len(self.tasks)), tf.int32)
        offsets = tf.constant(np.searchsorted(task_of, np.arange(len(self.tasks))), tf.int32)
        k = tf.random.stateless_uniform([], purpose_seed(seed, "task"), 0, len(self.tasks), tf.int32)
        degraded = tf.switch_case(k, [functools.partial(degrade, task, image, seed) for task in self.tasks])
        positive = offsets[k] + tf.random.stateless_uniform([], purpose_seed(seed, "positive"), 0, counts[k], tf.int32)
        n = self.config.selector.num_negatives
        others = tf.random.stateless_uniform([n], purpose_seed(seed, "negatives"), 0, len(self.phrasings) - counts[k],
                                             tf.int32)
        negatives = tf.where(others < offsets[k], others, others + counts[k])  # skip task k's block of rows
        return {"source": degraded, "task": k, "instructions": tf.concat([[positive], negatives], 0),
                "positive": tf.range(n + 1) == 0}

    def train_batches(self, *, start_step: int, process_index: int, process_count: int):
        return data.ImageBatches(self.config.data, degrade=self._degrade_and_ask, start_step=start_step,
                                 process_index=process_index, process_count=process_count)

    # -- training and inference -----------------------------------------------------------------------

    def loss(self, model: SelectorModel, batch: Batch, rng: jax.Array):
        """Eq. 6 over the batch's anchors (module docstring); metric: how often the positive scores highest."""
        heads = model.selector
        visual = heads.visual_embeddings(model.pooled_prompts(batch["source"]))  # (B, P, E)
        anchors = jnp.take_along_axis(visual, batch["task"][:, None, None], axis=1)[:, 0]
        texts = heads.text_embeddings(model.instruction_embeddings[...][batch["instructions"]])  # (B, K, E)
        loss = contrastive_loss(anchors, texts, batch["positive"], heads.logit_scale[...],
                                include_positive=self.config.selector.include_positive)
        similarity = jnp.einsum("be,bke->bk", anchors, texts)
        top = jnp.take_along_axis(batch["positive"], jnp.argmax(similarity, axis=1)[:, None], axis=1)
        return loss, {"positive_ranked_first": jnp.mean(top.astype(jnp.float32)),
                      "logit_scale": heads.logit_scale[...]}

    def sample(self, model: SelectorModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """The chain of all the selector's plugins on `source` (the selector has no images of its own)."""
        return self._chain(model, batch["source"], self.tasks, rng)

    def _chain(self, model: SelectorModel, images: jax.Array, tasks: Sequence[str], key: jax.Array) -> jax.Array:
        return plugin_lib.run_chain(model, self.schedule, self.config.sampler, images, key, tasks,
                                    [start_for(self.config, task) for task in tasks],
                                    later_steps=self.config.selector.later_steps, strength=self.config.plugin.strength)

    def chosen_plugins(self, model: SelectorModel, instruction: str, image: np.ndarray
                       ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """([(task, score)] of the plugins `instruction` selects for `image` (H, W, 3), highest first (eq. 5);
        {task: score} of every plugin)."""
        scores = self._scores(model, jnp.asarray(self.embed_texts([instruction])), jnp.asarray(image[None]))
        return selected_plugins(np.asarray(scores)[0, 0], list(self.tasks), self.config.selector.threshold), \
            dict(zip(self.tasks, map(float, np.asarray(scores)[0, 0])))

    def edit(self, model: SelectorModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """The selected (or config.edit.plugins') chain on `image` (H, W, 3) at the training scale (module
        docstring); the input alone when no plugin matches."""
        edit = self.config.edit
        fitted = latents_lib.fit_image(image, self.config.data.resize_short_side, self.parts.size_multiple)
        if edit.plugins:
            unknown = [t for t in edit.plugins if t not in self.tasks]
            if unknown:
                raise checks.ConfigError(f"config.edit.plugins = {tuple(edit.plugins)!r} is invalid; allowed: tasks of "
                                         f"this selector's plugins ({', '.join(self.tasks)}); unknown: {unknown}")
            chain, scores = tuple(edit.plugins), {}
        else:
            if not edit.instruction.strip():
                raise checks.ConfigError("config.edit.instruction = '' is invalid for --mode=edit on a selector run; "
                                         "allowed: an instruction (e.g. --config.edit.instruction='remove the rain'), "
                                         "or config.edit.plugins naming the chain")
            selected, scores = self.chosen_plugins(model, edit.instruction, fitted)
            chain = tuple(task for task, _ in selected)
            listed = ", ".join(f"{task} {score:.3f}" for task, score in scores.items())
            if not chain:
                logging.warning("--mode=edit: no plugin matches %r (scores %s; threshold %.3f): nothing edited",
                                edit.instruction, listed, self.config.selector.threshold)
            else:
                logging.info("--mode=edit: %r selects %s (scores %s)", edit.instruction, " -> ".join(chain), listed)
        self.last_edit = {"instruction": edit.instruction, "scores": scores,
                          "threshold": self.config.selector.threshold, "chain": list(chain),
                          "later_steps": self.config.selector.later_steps}
        if not chain:
            return {"input": fitted}
        if chain not in self._chains:
            self._chains[chain] = ModelFunction(lambda model, images, key: self._chain(model, images, chain, key))
        edited = self._chains[chain](model, jnp.asarray(fitted[None]), jax.random.key(edit.seed))
        return {"edited": np.asarray(edited[0]), "input": fitted}

    def edit_summary(self) -> dict | None:
        return self.last_edit

    def export(self, model: SelectorModel, directory: str) -> list[str]:
        """selector/ (VP, TP and the logit scale as safetensors, torch Linear names: visual_projection.weight
        (E, D), ...) and selector.json (tasks, threshold, widths); returns the paths written."""
        from editdiff.interop.task_plugin import export_plugin_selector

        if jax.process_index() != 0:
            return []
        path = os.path.join(directory, "selector")
        export_plugin_selector(model.selector, path)
        info = os.path.join(directory, "selector.json")
        with open(info, "w") as f:
            json.dump({"method": "plugin_selector", "tasks": list(self.tasks),
                       "threshold": self.config.selector.threshold, "prompt_width": self.parts.plugin_config.context_dim,
                       "text_width": self.text_width, "embed_dim": self.embed_dim,
                       "text_encoder": os.path.abspath(text_encoder_directory(self.config))}, f, indent=2)
        return [path, info]

    def evaluators(self) -> list[Evaluator]:
        return [SelectionEvaluator(name, entry.every, self, entry) for name, entry in self.config.evals.items()]


# ---------------------------------------------------------------------------------------------------------
# Evaluation.


SELECTION_HIGHER_IS_BETTER = {m: True for m in ("ZTA", "mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")}
PHRASING_SETS = {"held-out phrasings": "heldout", "training phrasings": "train"}


class SelectionEvaluator(Evaluator):
    """Selector metrics on held-out images, per phrasing split, trained heads beside untrained ones."""

    def __init__(self, name: str, every: int, method: SelectorMethod, settings: ml_collections.ConfigDict):
        super().__init__(name, every)
        self.method, self.settings = method, settings
        self.images = {task: data.fixed_examples(method.config.data, "heldout", settings.num_images, settings.seed,
                                                 degrade=functools.partial(degrade, task))["source"]
                       for task in method.tasks}
        self.texts = {split: {task: method.embed_texts(bank.phrasings(task, split)) for task in method.tasks}
                      for split in PHRASING_SETS.values()}
        self.untrained = method.heads(nnx.Rngs(settings.seed))
        self._prompts = ModelFunction(lambda model, images: model.pooled_prompts(images))
        self._scores = nnx.jit(selection_scores)

    def __call__(self, model, step, workdir, writer):
        from eval.multilabel import selector_metrics

        prompts = {task: np.concatenate([np.asarray(self._prompts(model, chunk))[:count] for count, chunk in
                                         chunks(images, self.settings.batch_size)])
                   for task, images in self.images.items()}
        scores = {}
        for set_name, split in PHRASING_SETS.items():
            scores[set_name] = {}
            for arm, heads in (("selector", model.selector), ("untrained", self.untrained)):
                rows, labels = [], []
                for k, task in enumerate(self.method.tasks):
                    s = np.asarray(self._scores(heads, jnp.asarray(self.texts[split][task]), jnp.asarray(prompts[task])))
                    rows.append(s.reshape(-1, len(self.method.tasks)))
                    labels.append(np.eye(len(self.method.tasks), dtype=bool)[np.full(len(rows[-1]), k)])
                scores[set_name][arm] = selector_metrics(np.concatenate(rows), np.concatenate(labels),
                                                         self.method.config.selector.threshold)
        write_scores(workdir, step, scores, higher_is_better=SELECTION_HIGHER_IS_BETTER, writer=writer)
        return scores


METHOD = SelectorMethod
