"""Training: the only layer that knows optax, orbax, tfds and ConfigDict.

`train_and_evaluate(config, workdir)` is the entry point of launch/train.py; below it the typed
`TrainSpec` and the built `Components` drive a data-parallel jitted step with EMA, orbax
checkpoints (with corrupt-checkpoint recovery), metrics and sample grids.
"""

from diffjax.train.components import Components, drop_labels, make_loss_fn
from diffjax.train.config import default_config
from diffjax.train.loop import run_training, train_and_evaluate
from diffjax.train.optim import ema_decay, ema_update, learning_rate_schedule, make_optimizer
from diffjax.train.spec import TrainSpec, spec_from_config
from diffjax.train.state import TrainState, create_train_state
from diffjax.train.step import make_train_step, train_step
from diffjax.train.workdir import load_trained

__all__ = [
    "Components",
    "TrainSpec",
    "TrainState",
    "create_train_state",
    "default_config",
    "drop_labels",
    "ema_decay",
    "ema_update",
    "learning_rate_schedule",
    "load_trained",
    "make_loss_fn",
    "make_optimizer",
    "make_train_step",
    "run_training",
    "spec_from_config",
    "train_and_evaluate",
    "train_step",
]
