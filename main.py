"""editdiff's entry point: the only file with flags.

    python main.py --config configs/multitask.py --workdir runs/demo              # train (default mode)
    python main.py --config configs/multitask.py:sd15 --config.pretrained.root=DIR --workdir runs/sd15
    python main.py --config configs/multitask.py --workdir runs/demo --mode=eval   # eval | sample | export

`--config.KEY=VALUE` overrides any config value (e.g. `--config.train.num_steps=200`).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from editdiff.config_checks import ConfigError
from editdiff.train import modes

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, optionally with :preset.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and evaluation tables.")
flags.DEFINE_enum("mode", "train", modes.MODES, "What to do with the config and workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    try:
        modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    except ConfigError as error:  # the message says what to change: no traceback
        sys.exit(f"{error}")


if __name__ == "__main__":
    app.run(main)
