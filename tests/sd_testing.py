"""Shared by the tests of text-conditioned latent models: Stable-Diffusion-like parts and pipeline directories
of tiny random transformers / diffusers models (no hub weights here)."""
from __future__ import annotations

import os

import ml_collections
import torch

from editdiff.interop.random_clip import write_byte_level_tokenizer

TEXT_WIDTH = 32  # the tiny text encoder's hidden_size: the U-Net's cross_attention_dim
MAX_TOKENS = 24  # SD pads to its 77


def write_sd_parts(root: os.PathLike) -> None:
    """root/text_encoder/ (CLIPTextModel, no projection, as SD's), root/tokenizer/, root/vae/ (AutoencoderKL,
    factor 2, 4 latent channels)."""
    import transformers
    from diffusers import AutoencoderKL

    vocab = write_byte_level_tokenizer(os.path.join(root, "tokenizer"), model_max_length=MAX_TOKENS)
    torch.manual_seed(0)
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(vocab) + 6, hidden_size=TEXT_WIDTH, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    transformers.CLIPTextModel(text_config).eval().save_pretrained(os.path.join(root, "text_encoder"))
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4).save_pretrained(os.path.join(root, "vae"))


def write_sd_pipeline(root: os.PathLike, diffusion: ml_collections.ConfigDict) -> None:
    """A StableDiffusionPipeline directory as diffusers saves one (model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/): write_sd_parts, a tiny UNet2DConditionModel (8 x 8 x 4 latents, cross-attention
    over the text encoder's width) and SD's PNDMScheduler with `diffusion`'s schedule."""
    import transformers
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    write_sd_parts(root)  # the pipeline's own subfolders, re-saved below with the rest
    torch.manual_seed(1)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_WIDTH,
                                attention_head_dim=4, norm_num_groups=8)
    scheduler = PNDMScheduler(num_train_timesteps=diffusion.num_train_timesteps, beta_schedule=diffusion.beta_schedule,
                              beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
                              prediction_type=diffusion.prediction_type, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(root, "vae")),
        text_encoder=transformers.CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder")),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(os.path.join(root, "tokenizer")), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(root)
