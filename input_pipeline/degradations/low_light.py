"""Low-light task: gamma darkening, then Poisson-Gaussian sensor noise.

    s   = scale * image ** gamma                              (darker, shadows crushed more than highlights)
    out = clip(k Poisson(s / k) + N(0, r), 0, 1)              (Var[out | s] = k s + r before the clip)

k (`shot`) is the shot-noise gain and r (`read`) the read-noise variance, both per image, drawn as in
"Unprocessing Images for Learned Raw Denoising" (Brooks et al. 2019): log k ~ U(log 1e-4, log 1.2e-2),
log r ~ N(2.18 log k + 1.20, 0.26^2). (They apply it in linear raw space; here it is applied to the darkened
image.) Darkening by a random gamma is how LLNet (Lore et al. 2017) synthesises low-light training images;
gamma in [2, 3.5] and scale in [0.3, 0.9] are our ranges, giving a roughly 3-30x darker mean on typical
photos.

`degrade_lowlight(image, seed)` -> `(H, W, 3)` float32 in [0, 1]; the three channels get independent noise.
"""
from __future__ import annotations

import tensorflow as tf

from input_pipeline.degradations.sampling import log_uniform, sub_seed, uniform


def degrade_lowlight(image: tf.Tensor, seed: tf.Tensor, *,
                     gamma_range: tuple[float, float] = (2.0, 3.5),
                     scale_range: tuple[float, float] = (0.3, 0.9),
                     shot_range: tuple[float, float] = (1e-4, 1.2e-2),
                     read_log_std: float = 0.26) -> tf.Tensor:
    """`(H, W, 3)` in [0, 1] -> darkened and noisy `(H, W, 3)` in [0, 1] (see the module docstring)."""
    gamma = uniform(sub_seed(seed, 0), gamma_range)
    scale = uniform(sub_seed(seed, 1), scale_range)
    shot = log_uniform(sub_seed(seed, 2), shot_range)
    read = tf.exp(2.18 * tf.math.log(shot) + 1.20 + read_log_std * tf.random.stateless_normal([], sub_seed(seed, 3)))
    signal = scale * tf.pow(image, gamma)
    electrons = tf.random.stateless_poisson(tf.shape(image), sub_seed(seed, 4), signal / shot, dtype=tf.float32)
    noisy = shot * electrons + tf.sqrt(read) * tf.random.stateless_normal(tf.shape(image), sub_seed(seed, 5))
    return tf.clip_by_value(noisy, 0.0, 1.0)
