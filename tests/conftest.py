"""Test-wide settings: CPU only, eight fake host devices for the sharding tests, unoptimised (fast-compiling) XLA
CPU code, float32 matmuls, and one JAX compilation cache per test session."""
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: the sharded-trainer tests need a (data=4, fsdp=2) mesh. The tiny
# test programs spend most of their time in XLA's CPU compiler, not running: without LLVM's optimisation passes
# it compiles them about twice as fast (the text-conditioned ldm run: 203 s -> 98 s).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The session's own cache directory (XDG_CACHE_HOME: where config.compilation_cache_dir = "auto" points), made
# by the controlling process and inherited by the xdist workers, so that tests compiling the same tiny programs
# compile them once per session, and no test run reads or fills the user's ~/.cache.
_SESSION_CACHE = "EDITDIFF_TEST_SESSION_CACHE"
if _SESSION_CACHE not in os.environ:
    os.environ[_SESSION_CACHE] = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="editdiff-tests-")

import jax  # noqa: E402
import pytest  # noqa: E402

from editdiff.train.compilation_cache import AUTO, MIN_COMPILE_SECONDS, cache_directory  # noqa: E402

# Parity tests compare with PyTorch float32; keep XLA's matmuls in full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir", cache_directory(AUTO))
jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The export of a randomly initialised tiny ldm model (what `--mode=export` writes): the frozen base of the
    rectifier's and the plugin's tests, built once per test module."""
    from configs.ldm import get_config
    from editdiff.methods.ldm import LDMMethod
    from editdiff.train.build import initial_model

    method = LDMMethod(get_config("tiny"))
    directory = str(tmp_path_factory.mktemp("ldm_base") / "export")
    method.export(initial_model(method), directory)
    return directory


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny random CLIPModel directory (editdiff.interop.random_clip) at 32 px: CLIP at 224 px is slow on CPU."""
    from editdiff.interop.random_clip import write_random_clip

    return write_random_clip(tmp_path_factory.mktemp("clip"), image_size=32)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the controlling process, after its workers have finished
        shutil.rmtree(os.environ[_SESSION_CACHE], ignore_errors=True)
