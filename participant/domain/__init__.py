"""What the coordinator asks of a participant and what it did about it, as plain data."""
