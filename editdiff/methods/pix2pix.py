"""pix2pix (Isola et al. 2017) as the multitask paper's GAN baseline (Tables 2-3: ours, Palette++, ours-single,
pix2pix): the multitask method's training data, evaluation sets, evaluators and --mode=edit, trained by the same
trainer.

In the multitask paper's notation (images in [-1, 1], NHWC):

    x = concat(I_A, I_ref, M, C)    (B, H, W, 3 + 3 + 1 + 9): source (masked when inpainting), colour
                                    reference (zeros when colour transfer is off), mask (1 = keep), the
                                    editing vector C broadcast over the image (beta, sigma, lambda, mu divided
                                    by the multitask `strength_scales` with config.model.normalise_strengths)
    G(x) = the edited image         (B, H, W, 3), `editdiff.nn.pix2pix.UNetGenerator`
    D(x, y) = patch logits          (B, h, w, 1), `editdiff.nn.pix2pix.PatchDiscriminator`

and, with y = I_B the target and the means over batch and patches (config.model.gan_loss):

    vanilla (the paper's non-saturating loss; sigma the logistic function)
        L_G^GAN = -log sigma(D(x, G(x)))
        L_D     = 1/2 [ -log sigma(D(x, y)) - log(1 - sigma(D(x, G(x)))) ]
    lsgan (least squares, Mao et al. 2017)
        L_G^GAN = (D(x, G(x)) - 1)^2
        L_D     = 1/2 [ (D(x, y) - 1)^2 + D(x, G(x))^2 ]
    L_G = L_G^GAN + lambda |G(x) - y|,   lambda = config.model.l1_weight (100 in the paper)

The paper halves L_D "to slow down the rate at which D learns relative to G".
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from editdiff import config_checks as checks
from editdiff.interop.torch_io import write_safetensors
from editdiff.methods import multitask_edit
from editdiff.methods.base import Batch, Method
from editdiff.methods.multitask import (EDIT_VECTOR_NAMES, EDIT_VECTOR_SIZE, EVALUATOR_KINDS, NUM_STRENGTHS,
                                        MultitaskMethod, scaled_edit_vector, strength_scales)
from editdiff.methods.reports import ModelFunction
from editdiff.nn.pix2pix import NORMS, PatchDiscriminator, UNetGenerator, patch_output_size
from input_pipeline.config import data_problems, default_data_config

GAN_LOSSES = ("vanilla", "lsgan")
# The batch fields concatenated into x, in order, and their channels.
INPUT_CHANNELS = {"source": 3, "reference": 3, "mask": 1, "edit_vector": EDIT_VECTOR_SIZE}
IN_CHANNELS = sum(INPUT_CHANNELS.values())
GENERATOR_WEIGHTS, EXPORT_CONFIG = "generator.safetensors", "pix2pix.json"

_MODEL_CHECKS = {
    "ngf": checks.int_at_least(1),
    "ndf": checks.int_at_least(1),
    "num_downs": checks.optional_int_at_least(2),
    "discriminator_layers": checks.int_at_least(1),
    "norm": checks.one_of(NORMS),
    "dropout_rate": checks.number_in(0, 1, high_open=True),
    "gan_loss": checks.one_of(GAN_LOSSES),
    "l1_weight": checks.number_at_least(0),
    "normalise_strengths": checks.BOOLEAN,
}


def num_downs(config: ml_collections.ConfigDict) -> int:
    """config.model.num_downs, or (None) as many times as the crop size halves evenly: down to a 1x1
    bottleneck for a power of two (8 at 256 px, 6 at 64, 4 at 16)."""
    size = config.data.crop_size
    return config.model.num_downs or (size & -size).bit_length() - 1


def _model_rules(config: ml_collections.ConfigDict) -> list[str]:
    size, problems = config.data.crop_size, []
    if not checks.is_int(size) or size < 1:  # the data section reports it
        return []
    levels = num_downs(config)
    if levels < 2 or size % 2**levels:
        problems.append(f"config.model.num_downs = {config.model.num_downs} is invalid for config.data.crop_size = "
                        f"{size}; allowed: an integer >= 2 with crop_size a multiple of 2**num_downs (None: "
                        f"derived, which needs a crop_size divisible by 4)")
    layers = config.model.discriminator_layers
    if patch_output_size(size, layers) < 1:
        problems.append(f"config.model.discriminator_layers = {layers} is invalid for config.data.crop_size = "
                        f"{size}; allowed: crop_size >= 3 * 2**discriminator_layers (the PatchGAN's output is "
                        f"empty otherwise)")
    return problems


def _gan_loss(kind: str, logits: jax.Array, real: bool) -> jax.Array:
    """The mean GAN loss of patch logits labelled real (1) or fake (0): binary cross-entropy on the logits
    (vanilla) or squared error (lsgan). float32 scalar."""
    labels = jnp.full_like(logits, float(real))
    if kind == "lsgan":
        return jnp.mean(jnp.square(logits - labels))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def _with_stopped_params(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose parameters pass no gradient back (its other variables are shared; updates to
    them in the copy, e.g. BatchNorm statistics, are dropped)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return nnx.merge(graphdef, jax.lax.stop_gradient(params), rest)


class Pix2PixModel(nnx.Module):
    """The generator G and the discriminator D; `strength_scales` (4,) or None as in `MultitaskModel`."""

    def __init__(self, generator: UNetGenerator, discriminator: PatchDiscriminator, *,
                 strength_scales: tuple[float, ...] | None):
        self.generator = generator
        self.discriminator = discriminator
        self.strength_scales = strength_scales

    def generator_input(self, batch: Batch) -> jax.Array:
        """x = concat(source, reference, mask, C broadcast): (B, H, W, 16) float32 (INPUT_CHANNELS)."""
        # C as the multitask model reads it (with every task label), so all arms see the same C.
        edit = scaled_edit_vector(batch["edit_vector"], self.strength_scales)
        b, h, w, _ = batch["source"].shape
        parts = {**batch, "edit_vector": jnp.broadcast_to(edit[:, None, None, :], (b, h, w, edit.shape[-1]))}
        return jnp.concatenate([parts[k].astype(jnp.float32) for k in INPUT_CHANNELS], axis=-1)


class Pix2PixMethod(Method):
    """Builds `Pix2PixModel`, trains G and D together on L_G + L_D (see `loss`), samples G(x)."""

    evaluator_kinds = EVALUATOR_KINDS
    # The multitask method's own functions, so that this arm trains on exactly its batches and is scored by
    # exactly its evaluators (the edit_grid sample grid, the edit_tables tables with the do-nothing arm). They
    # read config.data, config.evals and config.seed, and call `self.sample`.
    train_batches = MultitaskMethod.train_batches
    eval_sets = MultitaskMethod.eval_sets
    evaluators = MultitaskMethod.evaluators

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.dtype = jnp.dtype(config.compute_dtype)
        self._edit_sampler: ModelFunction | None = None

    @classmethod
    def config_sections(cls, config: ml_collections.ConfigDict) -> list[checks.Section]:
        """model (with the rule relating its sizes to the crop size), data and edit (the multitask method's)."""
        return [
            checks.Section("model", _MODEL_CHECKS, rules=(_model_rules,)),
            *checks.closed_like("data", default_data_config(), rules=(lambda c: data_problems(c.data),)),
            multitask_edit.edit_section(),
        ]

    def init_model(self, rngs: nnx.Rngs) -> Pix2PixModel:
        m = self.config.model
        generator = UNetGenerator(IN_CHANNELS, 3, num_downs=num_downs(self.config), ngf=m.ngf, norm=m.norm,
                                  dropout_rate=m.dropout_rate, dtype=self.dtype, rngs=rngs)
        discriminator = PatchDiscriminator(IN_CHANNELS + 3, ndf=m.ndf, num_layers=m.discriminator_layers,
                                           norm=m.norm, dtype=self.dtype, rngs=rngs)
        scales = strength_scales(self.config.data) if m.normalise_strengths else None
        return Pix2PixModel(generator, discriminator, strength_scales=scales)

    @property
    def trainable(self) -> nnx.filterlib.Filter:
        return nnx.All(nnx.Param, nnx.Any(nnx.PathContains("generator"), nnx.PathContains("discriminator")))

    def loss_terms(self, model: Pix2PixModel, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        """{"g_gan": L_G^GAN, "g_l1": |G(x) - y|, "d": L_D}, float32 scalars. L_D reaches the generator through
        no path (the fake image is a constant to it), L_G^GAN reaches the discriminator's parameters through no
        path (D is evaluated with stopped parameters): the gradient of g_gan + l1_weight g_l1 + d is L_G's for
        G and L_D's for D."""
        kind = self.config.model.gan_loss
        x, real = model.generator_input(batch), batch["target"].astype(jnp.float32)
        fake = model.generator(x, dropout_key=rng)
        loss_d = 0.5 * (_gan_loss(kind, model.discriminator(x, real), True)
                        + _gan_loss(kind, model.discriminator(x, jax.lax.stop_gradient(fake)), False))
        loss_g_gan = _gan_loss(kind, _with_stopped_params(model.discriminator)(x, fake), True)
        return {"g_gan": loss_g_gan, "g_l1": jnp.mean(jnp.abs(fake - real)), "d": loss_d}

    def loss(self, model: Pix2PixModel, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """L_G + L_D as one scalar for the trainer's one optimiser. Its gradient is L_G's w.r.t. G and L_D's
        w.r.t. D (`loss_terms`), and Adam's update of a parameter depends only on that parameter's own gradient
        history, so one Adam over both networks takes exactly the steps of two Adams (one per network, same
        hyper-parameters) updated simultaneously from the same G and D. The paper's code alternates instead
        (G's step sees the D just updated); a global gradient-norm clip would couple the two (the pix2pix
        configs turn it off)."""
        terms = self.loss_terms(model, batch, rng)
        loss = terms["g_gan"] + self.config.model.l1_weight * terms["g_l1"] + terms["d"]
        return loss, {"loss_g_gan": terms["g_gan"], "loss_g_l1": terms["g_l1"], "loss_d": terms["d"]}

    def sample(self, model: Pix2PixModel, batch: Batch, rng: jax.Array) -> jax.Array:
        """G(x) (B, H, W, 3) in [-1, 1], deterministic (no dropout): `rng` is unused."""
        return model.generator(model.generator_input(batch))

    def edit(self, model: Pix2PixModel, image: np.ndarray) -> dict[str, np.ndarray]:
        """config.edit's edit of `image` (H, W, 3) at its own resolution, as the multitask method edits
        (`multitask_edit`: tiles of config.edit.tile_size px, a multiple of 2^num_downs)."""
        if self._edit_sampler is None:
            self._edit_sampler = ModelFunction(self.sample)
        return multitask_edit.edit_photo(self._edit_sampler, model, image, self.config.edit, self.config.data,
                                         2**model.generator.num_downs)

    def export(self, model: Pix2PixModel, directory: str) -> list[str]:
        """`generator.safetensors` (every generator variable by dotted flax path, NHWC / HWIO layouts, BatchNorm
        statistics included) and `pix2pix.json`: the architecture and how its input is assembled."""
        m = self.config.model
        weights = {".".join(map(str, path)): np.asarray(variable[...])
                   for path, variable in nnx.to_flat_state(nnx.state(model.generator))}
        written = [os.path.join(directory, GENERATOR_WEIGHTS), os.path.join(directory, EXPORT_CONFIG)]
        write_safetensors(written[0], weights)
        with open(written[1], "w") as f:
            json.dump({
                "method": "pix2pix",
                "generator": {"architecture": "editdiff.nn.pix2pix.UNetGenerator", "in_channels": IN_CHANNELS,
                              "out_channels": 3, "num_downs": model.generator.num_downs, "ngf": m.ngf,
                              "norm": m.norm, "dropout_rate": m.dropout_rate},
                "input": {
                    # concatenated in this order on the channel axis (NHWC)
                    "channels": INPUT_CHANNELS,
                    "notes": "source and colour reference RGB in [-1, 1] (the source masked when inpainting, the "
                             "reference zeros without colour transfer); mask 1 = keep; the edit vector "
                             "broadcast over the image",
                    "edit_vector": list(EDIT_VECTOR_NAMES),
                    # C as the generator reads it: beta, sigma, lambda, mu divided by these
                    "strength_scales": list(model.strength_scales or [1.0] * NUM_STRENGTHS)},
                "output": "the edited RGB image in [-1, 1]",
            }, f, indent=2)
        return written


METHOD = Pix2PixMethod
