"""Operator-facing observability of the coordinator: Prometheus and TensorBoard."""
