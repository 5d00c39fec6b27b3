"""The five compositing effects, TF ops on one `(H, W, 3)` float32 image in [0, 1], run inside tf.data."""
from input_pipeline.effects.colour_transfer import colour_transfer
from input_pipeline.effects.film_grain import film_grain
from input_pipeline.effects.inpainting_masks import free_form_mask
from input_pipeline.effects.motion_blur import motion_blur
from input_pipeline.effects.unsharp import unsharp_mask

__all__ = ["colour_transfer", "film_grain", "free_form_mask", "motion_blur", "unsharp_mask"]
