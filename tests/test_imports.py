"""Importing any module of the project leaves the JAX backend uninitialised.

A multi-host job must call `jax.distributed.initialize` before anything touches a backend
(editdiff.train.distributed); a module-level `jnp.array(...)`, `jax.devices()` or `jax.random.key(...)` runs
at import time and makes every program that imports it, directly or not, unable to join a job.

Every module of the packages below is imported in a fresh interpreter in which nothing has initialised a
backend yet: one subprocess imports the modules in turn and checks the backend after each; when a module
initialises it, that subprocess stops and a new one carries on with the remaining modules (so a module that
imports an offender is caught too, as it should be: importing it has the same effect). A backend
initialisation hook records where it happened (file:line in the project).
"""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("editdiff", "input_pipeline", "eval", "configs")
TIMEOUT_S = 300


def _walk(path: str, name: str) -> list[str]:
    modules = [name]
    for info in pkgutil.iter_modules([path]):
        if info.name == "__main__":  # an entry point (`python -m eval`): importing it runs the program
            continue
        child = f"{name}.{info.name}"
        if info.ispkg:
            modules += _walk(os.path.join(path, info.name), child)
        else:
            modules.append(child)
    return modules


MODULES = [module for package in PACKAGES for module in _walk(os.path.join(REPO, package), package)]

# Runs in the subprocess: argv = [repo, module...]; one JSON line per module on stdout, prefixed by MARK.
MARK = "IMPORT-CHECK "
SCANNER = r"""
import importlib, json, os, sys, traceback

repo, modules = sys.argv[1], sys.argv[2:]
sys.path.insert(0, repo)
from jax._src import xla_bridge

where = []

def record_initialisation(backend):
    if not where:
        frames = [f for f in traceback.extract_stack()[:-1]
                  if f.filename.startswith(repo + os.sep) and os.path.basename(f.filename) != "<string>"]
        where.append([f"{os.path.relpath(f.filename, repo)}:{f.lineno}: {(f.line or '').strip()}"
                      for f in frames])

xla_bridge.register_backend_initialization_hook(record_initialisation)

def report(**fields):
    print(MARK + json.dumps(fields), flush=True)

for module in modules:
    result = {"module": module}
    try:
        importlib.import_module(module)
    except BaseException as error:
        result["error"] = f"{type(error).__name__}: {error}"
    if xla_bridge.backends_are_initialized():
        result["initialised_at"] = where[0] if where else ["(no frame in the project)"]
        report(**result)
        sys.exit(0)
    report(**result)
""".replace("MARK", repr(MARK))


@pytest.fixture(scope="module")
def import_results() -> dict[str, dict]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # nothing here needs fake devices
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    results, remaining = {}, list(MODULES)
    while remaining:
        done = subprocess.run(
            [sys.executable, "-c", SCANNER, REPO, *remaining], capture_output=True, text=True,
            timeout=TIMEOUT_S, env=env, cwd=REPO,
        )
        reports = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines() if line.startswith(MARK)]
        if not reports:
            raise AssertionError(f"The import scan stopped before {remaining[0]} (exit code {done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        for report in reports:
            results[report["module"]] = report
        remaining = remaining[len(reports):]
    return results


def test_the_packages_have_modules():
    assert {"editdiff.train.loop", "editdiff.train.distributed", "input_pipeline.pipeline", "eval.metrics",
            "configs.multitask"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_the_jax_backend_uninitialised(import_results, module):
    result = import_results[module]
    assert "error" not in result, f"importing {module} failed: {result['error']}"
    assert "initialised_at" not in result, (
        f"importing {module} initialised the JAX backend (JAX work at import time; move it into a function "
        "or behind first use). Where, outermost first:\n  " + "\n  ".join(result["initialised_at"])
    )
