"""Retired IDs: the (code, suffix) of removed or reassigned items, never issued again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "semid_retired",
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("code", sa.LargeBinary(), nullable=False),
        sa.Column("suffix", sa.Integer(), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("index_id", "version", "code", "suffix",
                                name=op.f("pk_semid_retired")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("semid_retired")
