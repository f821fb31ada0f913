"""Alembic's script directory for the coordinator database (env.py and versions/)."""
