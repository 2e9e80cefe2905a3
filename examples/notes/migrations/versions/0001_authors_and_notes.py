"""Authors and their notes.

Revision ID: 0001
Revises:
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create example_authors and example_notes."""
    op.create_table(
        "example_authors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "example_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["author_id"], ["example_authors.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_example_notes_author_id", "example_notes", ["author_id"])


def downgrade() -> None:
    """Drop them (a table's indexes go with it)."""
    op.drop_table("example_notes")
    op.drop_table("example_authors")
