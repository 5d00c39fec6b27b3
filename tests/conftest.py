"""Test-wide settings: CPU only, eight fake host devices for the sharding tests, float32 matmuls."""
import os

# Must happen before jax is imported anywhere: the sharded-trainer tests need a (data=4, fsdp=2) mesh.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

# Parity tests compare with PyTorch float32; keep XLA's matmuls in full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")
