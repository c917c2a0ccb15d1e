"""letters rendered ahead of the send

Revision ID: 0004_letters
Revises: 0003_tracking
Create Date: 2026-11-25 16:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_letters"
down_revision = "0003_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("letter_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("letter_filename", sa.String(length=500), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("letter_key", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("letter_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_deliveries_letter_sha256_blobs"), "blobs", ["letter_sha256"], ["sha256"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_deliveries_letter_sha256_blobs"), type_="foreignkey"
        )
        batch_op.drop_column("letter_requested_at")
        batch_op.drop_column("letter_key")
        batch_op.drop_column("letter_filename")
        batch_op.drop_column("letter_sha256")
