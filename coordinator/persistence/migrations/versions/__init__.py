"""The coordinator database's revisions, oldest first: rev0001 is schema version 1."""
