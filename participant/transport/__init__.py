"""participant/transport."""
