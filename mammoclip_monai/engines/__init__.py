"""MONAI/Ignite engines, metrics and handlers for contrastive training and evaluation."""

from .evaluator import ContrastiveEvaluator
from .handlers import (
    AtomicCheckpointSaver,
    EarlyStopping,
    FinalTestHandler,
    MetricsJSONWriter,
    RandomStates,
    ResumeHandler,
    TensorBoardImageGrid,
    every_n_iterations,
)
from .metrics import RetrievalRecall, ZeroShotAUROC, contrastive_metrics, loss_of, retrieval_metrics, zero_shot_metrics
from .runs import RunDirectory, RunDirectoryInUse, RunFinished
from .trainer import ContrastiveTrainer

__all__ = [
    "AtomicCheckpointSaver",
    "ContrastiveEvaluator",
    "ContrastiveTrainer",
    "EarlyStopping",
    "FinalTestHandler",
    "MetricsJSONWriter",
    "RandomStates",
    "ResumeHandler",
    "RetrievalRecall",
    "RunDirectory",
    "RunDirectoryInUse",
    "RunFinished",
    "TensorBoardImageGrid",
    "ZeroShotAUROC",
    "contrastive_metrics",
    "every_n_iterations",
    "loss_of",
    "retrieval_metrics",
    "zero_shot_metrics",
]
