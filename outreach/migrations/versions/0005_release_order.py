"""deliveries indexed by campaign, status and id: the dispatcher's release order

Revision ID: 0005_release_order
Revises: 0004_letters
Create Date: 2026-11-25 20:45:00
"""

from alembic import op

revision = "0005_release_order"
down_revision = "0004_letters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The dispatcher takes a campaign's next pending deliveries in id order, a few at a time:
    # with the id in the index, PostgreSQL reads them in that order and stops at the limit,
    # instead of reading and sorting every pending one at each tick (SQLite's indexes end
    # with the rowid already). The counts by status use the same index.
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_campaign_status")
        batch_op.create_index(
            "ix_deliveries_campaign_status", ["campaign_id", "status", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_campaign_status")
        batch_op.create_index(
            "ix_deliveries_campaign_status", ["campaign_id", "status"], unique=False
        )
