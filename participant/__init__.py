"""participant."""
