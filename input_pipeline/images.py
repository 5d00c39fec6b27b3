"""Decoding photos robustly into float32 RGB in [0, 1], and fitting them to the crop size.

Whatever arrives is converted: grey (L, LA, I, I;16, F, 1) is replicated to three channels; 16-bit data keeps
its precision (divided by 65535); alpha is composited over white (a transparent photo shows its background as
white, not as the undefined colour of transparent pixels); palette and CMYK go through Pillow's RGB conversion.
Corrupt, truncated and unreadable files raise `UnreadableImage`; the caller skips and counts them.
"""
from __future__ import annotations

import io
import logging
import threading

import numpy as np
from PIL import Image


class UnreadableImage(ValueError):
    """A file that is not a decodable image (corrupt, truncated, empty, unknown format)."""


class SkipLog:
    """Thread-safe record of skipped files: {path: reason}. tf.data workers write, the trainer reads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        """Records `path` once, with a warning in the log (the first reason wins)."""
        with self._lock:
            if path in self._reasons:
                return
            self._reasons[path] = reason
            count = len(self._reasons)
        logging.warning("input_pipeline: skipping %s (%s); %d file(s) skipped so far", path, reason, count)

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._reasons

    def __len__(self) -> int:
        with self._lock:
            return len(self._reasons)

    def as_dict(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)


def to_rgb_float(image: Image.Image) -> np.ndarray:
    """`(H, W, 3)` float32 in [0, 1] from any Pillow image mode (see the module docstring)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "I":  # 32-bit int: Pillow's mode for 16-bit PNGs; values above 16 bits are clipped
        grey = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    else:
        grey = None
    if grey is not None:
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def decode_image(data: bytes) -> np.ndarray:
    """Decodes encoded bytes (jpg, png, webp, ...) to `(H, W, 3)` float32 in [0, 1]; UnreadableImage on failure."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = to_rgb_float(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"{type(error).__name__}: {error}") from error
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UnreadableImage(f"empty image of shape {rgb.shape}")
    return rgb


def load_image(path: str) -> np.ndarray:
    """Reads and decodes one file; UnreadableImage when it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UnreadableImage(f"{type(error).__name__}: {error}") from error
    return decode_image(data)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of `(H, W, 3)` float32 (per channel, in float, so 16-bit precision survives)."""
    channels = [np.asarray(Image.fromarray(image[..., c]).resize((width, height), Image.Resampling.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes `(H, W, 3)` so that min(H, W) == short_side, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    return _resize(image, max(short_side, round(height * scale)), max(short_side, round(width * scale)))


def fit_to_crop(image: np.ndarray, crop_size: int, policy: str) -> np.ndarray | None:
    """Makes both sides >= crop_size: 'upscale' (bicubic, aspect kept), 'pad' (mirror), 'skip' (None)."""
    height, width = image.shape[:2]
    if height >= crop_size and width >= crop_size:
        return image
    if policy == "skip":
        return None
    if policy == "upscale":
        return resize_short_side(image, crop_size)
    pad_h, pad_w = max(0, crop_size - height), max(0, crop_size - width)
    return np.pad(image, [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)],
                  mode="symmetric")
