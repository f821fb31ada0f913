"""participant/service."""
