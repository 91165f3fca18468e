"""Alembic environment for semid_index (ships inside the wheel as ``semid_index._migrations``)."""
