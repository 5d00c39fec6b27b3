"""JAX's persistent compilation cache for every run: a restarted, resumed or repeated run of the same config
finds its compiled train step, initialisers and evaluators on disk instead of compiling them again.

    config.compilation_cache_dir = "auto"   $XDG_CACHE_HOME/editdiff/jax (default ~/.cache/editdiff/jax)
                                 = "DIR"    that directory (e.g. on a shared filesystem for a cluster)
                                 = ""       off

Entries are keyed by the program, the devices and JAX's version, so a changed config or another machine
compiles afresh. Set before the first compilation (and, like every jax.config setting, safe before
`jax.distributed.initialize`).
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections


AUTO = "auto"
# Programs compiling faster than this are not worth a disk round trip (JAX's own default is 1 s).
MIN_COMPILE_SECONDS = 0.5


def cache_directory(setting: str) -> str:
    """The directory `config.compilation_cache_dir` names ("" when off)."""
    if setting != AUTO:
        return setting
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "editdiff", "jax")


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str:
    """Points JAX's persistent cache at the configured directory; returns it ("" when off)."""
    directory = cache_directory(config.compilation_cache_dir)
    if directory:
        os.makedirs(directory, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        logging.info("Compilation cache: %s", directory)
    return directory
