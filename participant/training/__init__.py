"""Local training runtimes: the only package that imports TensorFlow (lazily, on first use)."""

from participant.training.keras_runtime import KerasTaskRuntime
from participant.training.validation import check_settings, check_weights

__all__ = ["KerasTaskRuntime", "check_settings", "check_weights"]
