"""The training loop, its control (pause/resume/stop) and checkpoints."""

from src_models.training.checkpoint import ModelBundle, load_model, save_model
from src_models.training.control import TrainingControl
from src_models.training.trainer import Progress, TrainConfig, train

__all__ = [
    "ModelBundle",
    "Progress",
    "TrainConfig",
    "TrainingControl",
    "load_model",
    "save_model",
    "train",
]
