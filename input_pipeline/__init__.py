"""tf.data input pipeline for multitask editing: sources, the five compositing effects, tasks, batches.

Batch fields are documented in `input_pipeline.tasks`; the data knobs in `input_pipeline.config`.
"""
from input_pipeline.config import default_data_config, validate_data_config
from input_pipeline.pipeline import TrainIterator, batch_spec, create_eval_sets, create_train_iterator, eval_set_names

__all__ = ["TrainIterator", "batch_spec", "create_eval_sets", "create_train_iterator", "default_data_config",
           "eval_set_names", "validate_data_config"]
