"""participant/domain."""
