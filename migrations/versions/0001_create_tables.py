"""Create the tables of the ticket database.

The schema is the one Store.create_tables made before the project had
migrations, with constraints named by activities.store.NAMING_CONVENTION.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Aware times: TIMESTAMP WITH TIME ZONE on PostgreSQL. SQLite has no such
# type, so the store writes UTC there and adds the zone back on read.
UTC_DATETIME = sa.DateTime(timezone=True)
# The ticket record's details, as JSONB on PostgreSQL.
DETAILS_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("phone", sa.String(), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_table(
        "techs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_techs")),
    )
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("priority", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("opened_at", UTC_DATETIME, nullable=False),
        sa.Column("closed_at", UTC_DATETIME, nullable=True),
        sa.Column("close_reason", sa.String(), nullable=True),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("tech_id", sa.String(), nullable=True),
        sa.Column("included_hours_per_month", sa.Float(), nullable=True),
        sa.Column("last_sequence", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_tickets_customer_id_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["tech_id"], ["techs.id"], name=op.f("fk_tickets_tech_id_techs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
    )
    op.create_index(op.f("ix_tickets_customer_id"), "tickets", ["customer_id"])
    op.create_index(op.f("ix_tickets_tech_id"), "tickets", ["tech_id"])

    op.create_table(
        "ticket_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("entry_type", sa.String(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("details", DETAILS_JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
            name=op.f("fk_ticket_record_ticket_id_tickets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticket_record")),
        sa.UniqueConstraint(
            "ticket_id", "sequence", name=op.f("uq_ticket_record_ticket_id_sequence")
        ),
    )
    op.create_index(op.f("ix_ticket_record_ticket_id"), "ticket_record", ["ticket_id"])

    op.create_table(
        "sent_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("ticket_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("recipient", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=True),
        sa.Column("sent_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sent_mail")),
        sa.UniqueConstraint("message_id", name=op.f("uq_sent_mail_message_id")),
    )
    op.create_index(op.f("ix_sent_mail_ticket_id"), "sent_mail", ["ticket_id"])

    op.create_table(
        "hours_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("month", sa.String(), nullable=False),
        sa.Column("hours", sa.Float(), nullable=False),
        sa.Column("logged_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hours_entries")),
        sa.UniqueConstraint(
            "ticket_id",
            "event_id",
            name=op.f("uq_hours_entries_ticket_id_event_id"),
        ),
    )
    op.create_index(
        "ix_hours_entries_customer_month", "hours_entries", ["customer_id", "month"]
    )

    op.create_table(
        "hours_warnings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("month", sa.String(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("ticket_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hours_warnings")),
        sa.UniqueConstraint(
            "customer_id",
            "month",
            "threshold",
            name=op.f("uq_hours_warnings_customer_id_month_threshold"),
        ),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    op.drop_table("hours_warnings")
    op.drop_table("hours_entries")
    op.drop_table("sent_mail")
    op.drop_table("ticket_record")
    op.drop_table("tickets")
    op.drop_table("techs")
    op.drop_table("customers")
