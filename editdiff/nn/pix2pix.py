"""pix2pix's networks (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"):
the U-Net generator G and the PatchGAN discriminator D, NHWC.

The objective they are trained with (paper eqs. 1, 3, 4; the losses live in `editdiff.methods.pix2pix`), for
an input x, its target y and the generator's only noise z (dropout):

    L_cGAN(G, D) = E_{x,y}[log D(x, y)] + E_{x,z}[log(1 - D(x, G(x, z)))]
    L_L1(G)      = E_{x,y,z}[ ||y - G(x, z)||_1 ]
    G*           = arg min_G max_D  L_cGAN(G, D) + lambda L_L1(G),    lambda = 100

Paper notation (its appendix 6.1): Ck = 4x4 convolution with k filters, stride 2, then normalisation and a
ReLU (leaky, slope 0.2, in the encoder and the discriminator); CDk = Ck with dropout. Convolutions pad by 1
(PyTorch's padding=1, not XLA's 'SAME'), so a stride-2 layer halves an even size exactly. Weights are drawn
from N(0, 0.02) as in the paper's code; a convolution followed by a normalisation has no bias (the
normalisation removes it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.conv import conv_general_dilated

NORMS = ("instance", "batch")
KERNEL = 4
LEAKY_SLOPE = 0.2
DROPOUT_LAYERS = 3  # the paper's CD512-CD1024-CD1024: the first three decoder layers
_INIT = nnx.initializers.normal(0.02)


def _conv(in_channels: int, out_channels: int, *, stride: int, use_bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """4x4 convolution, padding 1: (B, H, W, in) -> (B, floor(H / stride) - (stride == 1), ..., out)."""
    return nnx.Conv(in_channels, out_channels, (KERNEL, KERNEL), strides=stride, padding=((1, 1), (1, 1)),
                    use_bias=use_bias, kernel_init=_INIT, conv_general_dilated=conv_general_dilated, dtype=dtype,
                    rngs=rngs)


def _up_conv(in_channels: int, out_channels: int, *, use_bias: bool, dtype, rngs: nnx.Rngs) -> nnx.ConvTranspose:
    """The geometry of PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1): (B, H, W, in) -> (B, 2H, 2W,
    out). XLA pads the stride-dilated input, by kernel - 1 - padding = 2 on each side."""
    return nnx.ConvTranspose(in_channels, out_channels, (KERNEL, KERNEL), strides=2, padding=((2, 2), (2, 2)),
                             use_bias=use_bias, kernel_init=_INIT, dtype=dtype, rngs=rngs)


def _norm(kind: str, channels: int, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """`kind` "instance": per image and channel over H, W (learned scale and shift); "batch": BatchNorm with
    running statistics (PyTorch's momentum 0.1 is flax's 0.9), which the trainer carries as model state."""
    if kind == "instance":
        return nnx.InstanceNorm(channels, epsilon=1e-5, dtype=dtype, rngs=rngs)
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def level_widths(base: int, levels: int) -> list[int]:
    """Channels of the paper's C64-C128-C256-C512-C512...: base * min(2^i, 8) for i < levels."""
    return [base * min(2**i, 8) for i in range(levels)]


class UNetGenerator(nnx.Module):
    """G: x (B, H, W, in_channels) -> (B, H, W, out_channels) in (-1, 1); H and W multiples of 2^n.

    With n = num_downs levels of widths w_i = ngf * min(2^(i-1), 8), an encoder e_1..e_n (e_i at H / 2^i):

        e_1 = conv_1(x)                                   (no normalisation on the first layer)
        e_i = norm(conv_i(LeakyReLU(e_{i-1})))            1 < i < n
        e_n = conv_n(LeakyReLU(e_{n-1}))                  the bottleneck, 1x1 when 2^n = H: no normalisation

    and a decoder of transposed convolutions with skip connections (d_i at H / 2^(i-1), w_{i-1} channels):

        d_n = norm(upconv_n(ReLU(e_n)))
        d_i = norm(upconv_i(ReLU(concat(e_i, d_{i+1}))))  1 < i < n
        G(x) = tanh(upconv_1(ReLU(concat(e_1, d_2))))

    n = 8 at 256 px is the paper's network: encoder C64-C128-C256-C512-C512-C512-C512-C512, decoder
    CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128 (the decoder's widths count the concatenated skips).
    `dropout_rate` > 0 drops d_n, d_{n-1}, d_{n-2} (the paper's CD layers, rate 0.5) when a key is given.
    """

    def __init__(self, in_channels: int, out_channels: int = 3, *, num_downs: int, ngf: int = 64,
                 norm: str = "instance", dropout_rate: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        if num_downs < 2:
            raise ValueError(f"num_downs = {num_downs}: the U-Net needs at least 2 levels")
        widths = level_widths(ngf, num_downs)
        self.num_downs = num_downs
        self.down = nnx.List([_conv(c_in, c_out, stride=2, use_bias=i in (0, num_downs - 1), dtype=dtype, rngs=rngs)
                              for i, (c_in, c_out) in enumerate(zip([in_channels] + widths[:-1], widths))])
        self.down_norms = nnx.List([_norm(norm, c, dtype=dtype, rngs=rngs) for c in widths[1:-1]])
        # up[j] makes d_{n-j}: from e_n alone (j = 0), else from concat(e_{n-j}, d_{n-j+1}).
        up_in = [widths[-1]] + [2 * c for c in reversed(widths[1:-1])] + [2 * widths[0]]
        up_out = list(reversed(widths[:-1])) + [out_channels]
        self.up = nnx.List([_up_conv(c_in, c_out, use_bias=j == num_downs - 1, dtype=dtype, rngs=rngs)
                            for j, (c_in, c_out) in enumerate(zip(up_in, up_out))])
        self.up_norms = nnx.List([_norm(norm, c, dtype=dtype, rngs=rngs) for c in up_out[:-1]])
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """(B, H, W, in_channels) -> (B, H, W, out_channels) float32 in (-1, 1); dropout only with a key."""
        skips = [self.down[0](x)]
        for i in range(1, self.num_downs):
            h = self.down[i](jax.nn.leaky_relu(skips[-1], LEAKY_SLOPE))
            skips.append(self.down_norms[i - 1](h) if i < self.num_downs - 1 else h)
        h = skips.pop()
        for j, (up, norm) in enumerate(zip(self.up, self.up_norms)):
            h = norm(up(jax.nn.relu(h)))
            if j < DROPOUT_LAYERS:
                h = self.dropout(h, deterministic=dropout_key is None,
                                 rngs=None if dropout_key is None else jax.random.fold_in(dropout_key, j))
            h = jnp.concatenate([skips.pop(), h], axis=-1)
        return jnp.tanh(self.up[-1](jax.nn.relu(h)).astype(jnp.float32))


def patch_layers(num_layers: int) -> list[tuple[int, int]]:
    """(kernel, stride) of the discriminator's convolutions: num_layers stride-2, then two stride-1."""
    return [(KERNEL, 2)] * num_layers + [(KERNEL, 1)] * 2


def patch_receptive_field(num_layers: int) -> int:
    """The side of the input window one output logit sees: r <- stride (r - 1) + kernel from the last layer to
    the first (= 9 * 2^num_layers - 2): 70 for the paper's 3 layers, 34 for 2, 16 for 1."""
    r = 1
    for kernel, stride in reversed(patch_layers(num_layers)):
        r = stride * (r - 1) + kernel
    return r


def patch_output_size(size: int, num_layers: int) -> int:
    """The discriminator's output side for an input side `size` (30 for 256 px at 3 layers); < 1: too small."""
    for kernel, stride in patch_layers(num_layers):
        size = (size + 2 - kernel) // stride + 1
    return size


class PatchDiscriminator(nnx.Module):
    """D: (x, y) (B, H, W, Cx), (B, H, W, Cy) -> logits (B, h, w, 1), h = `patch_output_size(H, num_layers)`:
    one real/fake logit per overlapping patch of `patch_receptive_field(num_layers)` pixels (the paper's 70x70
    PatchGAN at num_layers = 3: C64-C128-C256-C512, 30x30 logits at 256 px). With L = num_layers and widths
    ndf * min(2^l, 8):

        h_0 = LeakyReLU(conv_0(concat(x, y)))      ndf, stride 2, no normalisation
        h_l = LeakyReLU(norm(conv_l(h_{l-1})))     stride 2 for 0 < l < L, stride 1 for l = L
        D(x, y) = conv_{L+1}(h_L)                  1 channel, stride 1; a logit (no sigmoid)
    """

    def __init__(self, in_channels: int, *, ndf: int = 64, num_layers: int = 3, norm: str = "instance",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        widths = level_widths(ndf, num_layers + 1)
        strides = [stride for _, stride in patch_layers(num_layers)]
        self.convs = nnx.List([
            _conv(c_in, c_out, stride=s, use_bias=layer in (0, num_layers + 1), dtype=dtype, rngs=rngs)
            for layer, (c_in, c_out, s) in enumerate(zip([in_channels] + widths, widths + [1], strides))])
        self.norms = nnx.List([_norm(norm, c, dtype=dtype, rngs=rngs) for c in widths[1:]])

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """(B, H, W, Cx), (B, H, W, Cy) -> (B, h, w, 1) float32 logits."""
        h = jax.nn.leaky_relu(self.convs[0](jnp.concatenate([x, y], axis=-1)), LEAKY_SLOPE)
        for conv, norm in zip(self.convs[1:-1], self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), LEAKY_SLOPE)
        return self.convs[-1](h).astype(jnp.float32)
