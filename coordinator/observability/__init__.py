"""Operator-facing observability of the coordinator: the Prometheus endpoint."""
