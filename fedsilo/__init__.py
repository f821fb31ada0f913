"""fedsilo: cross-silo federated learning for TensorFlow/Keras with secure aggregation."""

from fedsilo.tls_policy import apply_tls13_only

apply_tls13_only()  # before any fedsilo module imports grpc: see fedsilo/tls_policy.py

__version__ = "0.1.0"
