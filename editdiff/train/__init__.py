"""The method-agnostic trainer.

config.py        the trainer's config keys (train, mesh, distributed, init_from, frozen_from, evals) and the
                 one validation pass over the trainer's and the method's sections
distributed.py   joining a multi-host job before anything touches JAX
mesh.py          the ("data", "fsdp") device mesh; batch and state layouts; global batches from host slices
optimizer.py     AdamW, warm-up + constant / cosine / staircase-exponential schedules, clipping, accumulation
state.py         TrainState (step, trainable params, optimiser state, EMA, model state); the model's split
step.py          one jitted optimiser micro-step
checkpoint.py    Orbax checkpoints: mismatch vs damage, fallback, partial (EMA-only) restore; config.json
workdir_lock.py  one training run per workdir
warm_start.py    config.init_from / config.frozen_from: parameters from other runs' workdirs
preemption.py    SIGTERM -> save and stop
build.py         a run's state on the mesh, fresh or restored; load_trained_model for eval/sample/export
hooks.py         PeriodicHooks (metrics, end of run) and the TrainView they see
loop.py          train_and_evaluate(config, workdir, *, method=None, hooks=())
modes.py         what `main.py --mode=train|eval|sample|export` does
"""
