"""coordinator/service."""
