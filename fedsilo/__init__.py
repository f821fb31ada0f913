"""fedsilo: cross-silo federated learning for TensorFlow/Keras with secure aggregation."""

__version__ = "0.1.0"
