"""Alembic revisions of the semid_index schema, oldest first."""
