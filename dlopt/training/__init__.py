"""Training with Flax: train state, jit/pmap/sharded steps, the fit loop and callbacks.

Importing this package imports flax; ``import dlopt`` alone does not.
"""

from dlopt.training import monitor as monitor
from dlopt.training.averaging import SWA as SWA
from dlopt.training.averaging import Averages as Averages
from dlopt.training.averaging import ModelEMA as ModelEMA
from dlopt.training.averaging import swap_averages as swap_averages
from dlopt.training.batchnorm import update_bn as update_bn
from dlopt.training.callback_list import CallbackList as CallbackList
from dlopt.training.callbacks import Callback as Callback
from dlopt.training.callbacks import EarlyStopping as EarlyStopping
from dlopt.training.callbacks import LambdaCallback as LambdaCallback
from dlopt.training.callbacks import ReduceLROnPlateau as ReduceLROnPlateau
from dlopt.training.callbacks import TerminateOnNaN as TerminateOnNaN
from dlopt.training.loop import History as History
from dlopt.training.loop import Resume as Resume
from dlopt.training.loop import evaluate as evaluate
from dlopt.training.loop import fit as fit
from dlopt.training.options import StepOptions as StepOptions
from dlopt.training.parallel import make_mesh as make_mesh
from dlopt.training.parallel import make_mesh_eval_step as make_mesh_eval_step
from dlopt.training.parallel import make_mesh_train_step as make_mesh_train_step
from dlopt.training.parallel import make_pmap_eval_step as make_pmap_eval_step
from dlopt.training.parallel import make_pmap_train_step as make_pmap_train_step
from dlopt.training.parallel import pad_batch as pad_batch
from dlopt.training.parallel import replicate as replicate
from dlopt.training.parallel import shard_batch as shard_batch
from dlopt.training.parallel import shard_state as shard_state
from dlopt.training.parallel import split_batch as split_batch
from dlopt.training.parallel import state_sharding as state_sharding
from dlopt.training.parallel import unreplicate as unreplicate
from dlopt.training.state import TrainState as TrainState
from dlopt.training.steps import make_eval_step as make_eval_step
from dlopt.training.steps import make_train_step as make_train_step

# Checkpoints need orbax (the "checkpoint" extra): imported on first use, not with this package.
_CHECKPOINT_NAMES = (
    "CheckpointDamagedError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ModelCheckpoint",
    "available_steps",
    "restore",
)


def __getattr__(name: str):
    if name in _CHECKPOINT_NAMES:
        from dlopt.training import checkpoint

        return getattr(checkpoint, name)
    if name == "BackupAndRestore":
        from dlopt.training.backup import BackupAndRestore

        return BackupAndRestore
    raise AttributeError(f"module 'dlopt.training' has no attribute {name!r}")
