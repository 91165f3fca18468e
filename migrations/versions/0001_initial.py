"""Initial schema: indexes, codebook versions, codebooks, items.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "semid_indexes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("n_levels", sa.Integer(), nullable=False),
        sa.Column("codebook_sizes", sa.Text(), nullable=False),
        sa.Column("code_width", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=True),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_semid_indexes")),
        sa.UniqueConstraint("name", name=op.f("uq_semid_indexes_name")),
    )
    op.create_table(
        "semid_versions",
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["index_id"], ["semid_indexes.id"],
                                name=op.f("fk_semid_versions_index_id_semid_indexes"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("index_id", "version", name=op.f("pk_semid_versions")),
    )
    op.create_table(
        "semid_codebooks",
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["index_id", "version"],
                                ["semid_versions.index_id", "semid_versions.version"],
                                name=op.f("fk_semid_codebooks_index_id_semid_versions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("index_id", "version", "level", name=op.f("pk_semid_codebooks")),
    )
    op.create_table(
        "semid_items",
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("code", sa.LargeBinary(), nullable=False),
        sa.Column("suffix", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("index_id", "version", "item_key", name=op.f("pk_semid_items")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_semid_items_index_id_version_code_suffix"), "semid_items",
                    ["index_id", "version", "code", "suffix"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_semid_items_index_id_version_code_suffix"), table_name="semid_items")
    op.drop_table("semid_items")
    op.drop_table("semid_codebooks")
    op.drop_table("semid_versions")
    op.drop_table("semid_indexes")
