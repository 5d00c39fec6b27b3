"""The method-agnostic trainer.

config.py        the trainer's config keys: defaults and validation
mesh.py          the ("data", "fsdp") device mesh; batch and state layouts; global batches from host slices
optimizer.py     AdamW, warm-up + constant/cosine schedule, clipping, gradient accumulation
state.py         TrainState (step, trainable params, optimiser state, EMA); model split into trainable/frozen
step.py          one jitted optimiser micro-step
checkpoint.py    Orbax checkpoints with fallback from unreadable ones; the config as JSON
preemption.py    SIGTERM -> save and stop
build.py         a run's state on the mesh, fresh or restored; load_trained_model for eval/sample/export
hooks.py         PeriodicHooks (metrics, samples, evaluation) and the TrainView they see
loop.py          train_and_evaluate(config, workdir, *, method=None, ...)
edit_reports.py  hooks writing sample grids and evaluation tables for image-editing methods
modes.py         what `main.py --mode=train|eval|sample|export` does
"""
