"""Codebook prices: a balanced (or capacity-constrained) version's per-level prices, a checked
array blob beside each level's codebook (NULL: none), instead of base64 text in the version's
JSON header.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("semid_codebooks", sa.Column("prices", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("semid_codebooks") as batch:
        batch.drop_column("prices")
