"""coordinator/transport."""
