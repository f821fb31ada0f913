"""coordinator/persistence."""
