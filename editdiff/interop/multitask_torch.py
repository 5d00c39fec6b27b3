"""The exported multitask model edited in PyTorch: diffusers' UNet2DConditionModel and DDIMScheduler, the torch
mapping network, and the U-Net input assembled as the export's `multitask.json` records it (strength scales,
mask channel, residual, source skip, standardisation, the edit vector in the class embedding, the sampler's
start). The same edit as `--mode=edit` on the JAX model, for users who ship PyTorch:

    from editdiff.interop.multitask_torch import MultitaskEditor
    editor = MultitaskEditor.from_export("runs/demo/export")
    edited = editor(source, reference, mask, edit_vector, noise)   # NCHW tensors in [-1, 1]

Tensors: source, reference (B, 3, H, W) in [-1, 1] (the source already multiplied by the mask; the reference
zeros without colour transfer), mask (B, 1, H, W) in {0, 1} (1 = keep), edit_vector (B, 9) = [beta, sigma,
lambda, mu, e1..e5] as `input_pipeline.tasks.edit_vector` builds it, noise (B, C, h, w) the start latent x_T.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from editdiff.diffusion.timesteps import first_step_for_strength
from editdiff.interop.mapping_network import load_torch_mapping_network

INPAINT_ONLY = (0.0, 0.0, 0.0, 1.0, 0.0)  # task labels [blur, grain, colour, inpaint, sharpen]


class PatchAutoencoder:
    """editdiff.nn.patch_autoencoder in torch: pixel-unshuffle by f, position-major channels k = (i f + j) 3 + c."""

    def __init__(self, factor: int):
        self.factor = factor
        self.scaling_factor = 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).permute(0, 3, 5, 1, 2, 4).reshape(b, f * f * c, h // f, w // f)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, k, h, w = z.shape
        f = self.factor
        return z.reshape(b, f, f, k // (f * f), h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, k // (f * f), h * f, w * f)


class _VAE:
    """diffusers' AutoencoderKL as the latent space: z = s * E(x).mean, x = D(z / s)."""

    def __init__(self, directory: str):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(directory).eval()
        self.scaling_factor = self.vae.config.scaling_factor
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample


def _channel_statistics(x: torch.Tensor, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example and channel of (B, C, H, W): the mean and the (population) std floored at min_std,
    each (B, C, 1, 1) — `editdiff.methods.multitask.channel_statistics`."""
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True, correction=0).clamp_min(min_std)


class MultitaskEditor:
    """eps_theta(z_t, t | z_A, I_ref, [mask], C) and its DDIM sampling, from an export directory."""

    def __init__(self, directory: str):
        from diffusers import DDIMScheduler, UNet2DConditionModel

        with open(os.path.join(directory, "multitask.json")) as f:
            self.spec = json.load(f)
        autoencoder = self.spec["autoencoder"]
        self.autoencoder = (PatchAutoencoder(autoencoder["factor"]) if autoencoder["kind"] == "patch"
                            else _VAE(os.path.join(directory, autoencoder["subfolder"])))
        self.unet = UNet2DConditionModel.from_pretrained(os.path.join(directory, "unet")).eval()
        self.mapping = (load_torch_mapping_network(os.path.join(directory, "mapping"))
                        if self.spec["context"] is not None else None)
        self.scheduler = DDIMScheduler.from_pretrained(os.path.join(directory, "scheduler"))
        self.standardise = self.spec.get("standardise", "none")  # exports before the key: absent
        self.mask_channel = any(part.startswith("inpainting mask") for part in self.spec["unet_input"])

    @classmethod
    def from_export(cls, directory: str) -> "MultitaskEditor":
        return cls(directory)

    @property
    def factor(self) -> int:
        """The autoencoder's downsampling: latents are (H / factor, W / factor)."""
        return self.autoencoder.factor

    @property
    def latent_channels(self) -> int:
        return self.unet.config.out_channels

    def edit_input(self, edit_vector: torch.Tensor) -> torch.Tensor:
        """C as the model reads it: strengths divided by multitask.json's strength_scales, labels kept or not."""
        scales = torch.tensor(self.spec["strength_scales"], dtype=torch.float32)
        edit = torch.cat([edit_vector[:, :4] / scales, edit_vector[:, 4:]], dim=1)
        return edit[:, :len(self.spec["edit_vector"])]

    def conditions(self, source, reference, mask, edit_vector):
        """(z_A (B, C, h, w), image conditions (B, c, h, w), context (B, tokens, dim) or None), the conditions in
        multitask.json's order — with a frame (standardise), z_A standardised by its own statistics and the
        reference relative to the source's levels."""
        source_latent = self.autoencoder.encode(source)
        h, w = source_latent.shape[-2:]
        reference = F.interpolate(reference, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        source_view = source_latent
        if self.standardise != "none":
            min_std = self.spec["standardise_min_std"]
            latent_mean, latent_std = _channel_statistics(source_latent, min_std)
            source_view = (source_latent - latent_mean) / latent_std
            pixel_mean, pixel_std = _channel_statistics(source, min_std)
            reference = (reference - pixel_mean) / pixel_std
        parts = [source_view, reference]
        if self.mask_channel:
            parts.append(F.avg_pool2d(mask, self.autoencoder.factor))
        edit = self.edit_input(edit_vector)
        if self.mapping is None:  # Palette++
            parts.append(edit[:, :, None, None].expand(-1, -1, h, w))
            return source_latent, torch.cat(parts, dim=1), None
        return source_latent, torch.cat(parts, dim=1), self.mapping(edit)

    def frame(self, source_latent, reference, edit_vector) -> tuple[torch.Tensor, torch.Tensor]:
        """(offset, scale): the sampler diffuses (z_B - offset) / scale — multitask.json's residual or
        standardise, as `editdiff.methods.multitask.MultitaskModel.frame` defines them."""
        if self.spec["residual"]:
            return source_latent, torch.tensor(1.0 / self.spec["residual_scale"])
        if self.standardise == "none":
            return torch.tensor(0.0), torch.tensor(1.0)
        min_std = self.spec["standardise_min_std"]
        mean, std = _channel_statistics(source_latent, min_std)
        if self.standardise == "colour_reference":
            colour = (edit_vector[:, 6] > 0.5)[:, None, None, None]  # e_colour
            reference_mean, reference_std = _channel_statistics(self.autoencoder.encode(reference), min_std)
            mean, std = torch.where(colour, reference_mean, mean), torch.where(colour, reference_std, std)
        return mean, std

    def _known_mask(self, mask: torch.Tensor, edit_vector: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w): the latent cells wholly outside the hole, for pure inpainting only."""
        cells = -F.max_pool2d(-mask, self.autoencoder.factor)
        only = torch.all(edit_vector[:, 4:] == torch.tensor(INPAINT_ONLY), dim=1).float()
        return cells * only[:, None, None, None]

    @torch.no_grad()
    def __call__(self, source, reference, mask, edit_vector, noise) -> torch.Tensor:
        """The edited images (B, 3, H, W) in [-1, 1]: DDIM over the export's sampler settings, from x_T = noise
        (or, with source_strength < 1, from the source re-noised with it)."""
        sampler = self.spec["sampler"]
        if sampler["name"] != "ddim" or sampler["eta"]:
            raise ValueError(f"MultitaskEditor samples with deterministic DDIM; the export was made with {sampler}")
        source_latent, conditions, context = self.conditions(source, reference, mask, edit_vector)
        offset, scale = self.frame(source_latent, reference, edit_vector)
        # exports before the key have no class embedding
        class_labels = self.edit_input(edit_vector) if self.spec.get("edit_embedding") else None
        scheduler = self.scheduler
        scheduler.set_timesteps(sampler["num_steps"])
        known = None
        if sampler["blend_known_region"]:
            known = ((source_latent - offset) / scale, self._known_mask(mask, edit_vector))
        stride = scheduler.config.num_train_timesteps // sampler["num_steps"]
        timesteps, z = scheduler.timesteps, noise
        strength = sampler.get("source_strength", 1.0)  # exports before the key start from noise
        if strength < 1.0:  # SDEdit from the source as `MultitaskModel.start_latent` gives it
            timesteps = timesteps[first_step_for_strength(sampler["num_steps"], strength):]
            start = (conditions[:, :source_latent.shape[1]] if self.standardise != "none"
                     else (source_latent - offset) / scale)
            z = scheduler.add_noise(start, noise, timesteps[:1])
        for t in timesteps:
            prediction = self.unet(torch.cat([z, conditions], dim=1), t, context, class_labels=class_labels).sample
            if self.spec.get("source_skip"):  # the U-Net predicts x_0 - z_A (exports before the key: absent)
                prediction = prediction + conditions[:, :source_latent.shape[1]]  # z_A as the U-Net reads it
            z = scheduler.step(prediction, t, z).prev_sample
            if known is not None:  # the known region re-noised to the level the step landed on
                prev = int(t) - stride
                a_bar = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
                noisy = a_bar.sqrt() * known[0] + (1.0 - a_bar).sqrt() * noise
                z = known[1] * noisy + (1.0 - known[1]) * z
        edited = offset + scale * z
        return self.autoencoder.decode(edited).clamp(-1.0, 1.0)
