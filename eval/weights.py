"""Where the feature networks' weights live, and errors that say which file is missing and where to put it.

Backbones come from one local directory (`--weights DIR`) under their upstream file names; the LPIPS linear
heads ship inside the `lpips` pip package (installed with `pip install --no-deps lpips==0.1.4`, because the
package's torchvision dependency does not import beside our torch build) and are found without importing it.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from editdiff.interop.torch_io import CheckpointError, read_state_dict

TORCHVISION_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}
INCEPTION_FILE = (
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
LPIPS_VERSION = "v0.1"
LPIPS_INSTALL = "pip install --no-deps lpips==0.1.4"


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """A weights file that is not where the metric looks for it."""


def read_weights_file(directory: str | os.PathLike, filename: str, *, purpose: str,
                      url: str) -> tuple[dict[str, np.ndarray], str]:
    """Reads `directory/filename` as a state dict; if absent, says what it is for and where to get it."""
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise MissingWeightsError(f"{purpose} needs {path}: download {url} and put it in {directory} "
                                  "(the directory given as --weights)")
    return read_state_dict(directory, [filename])


def lpips_heads_directory() -> str:
    """The `lpips` package's `weights/v0.1` directory, located without importing the package."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise MissingWeightsError(f"LPIPS linear heads come from the lpips package: run `{LPIPS_INSTALL}`")
    return os.path.join(os.path.dirname(spec.origin), "weights", LPIPS_VERSION)


def read_lpips_heads(backbone: str) -> tuple[dict[str, np.ndarray], str]:
    """The shipped linear-head state dict (`lin{k}.model.1.weight`, (1, C_k, 1, 1)) for `backbone`."""
    directory = lpips_heads_directory()
    return read_weights_file(directory, f"{backbone}.pth", purpose=f"LPIPS ({backbone}) linear heads",
                             url=f"`{LPIPS_INSTALL}`")
