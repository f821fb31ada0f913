"""coordinator/domain."""
