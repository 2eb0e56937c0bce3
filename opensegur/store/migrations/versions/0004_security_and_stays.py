"""Accounts, sessions, tokens, audit chain, configuration versions, stays

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("login", sa.String(100), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("rpps", sa.String(11), nullable=True, index=True),
        sa.Column("assignments", sa.JSON(), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("totp_secret", sa.String(64), nullable=True),
        sa.Column("totp_last_step", sa.Integer(), nullable=True),
        sa.Column("recovery_codes", sa.JSON(), nullable=False),
        sa.Column("psc_sub", sa.String(200), nullable=True, unique=True),
        sa.Column("sso_sub", sa.String(200), nullable=True, unique=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("departed_at", TS, nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("last_login_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "webauthn_credential",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("account.id"), nullable=False, index=True),
        sa.Column("credential_id", sa.String(400), nullable=False, unique=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "web_session",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("account.id"), nullable=False, index=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("strong", sa.Boolean(), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("last_used_at", TS, nullable=True),
    )
    op.create_table(
        "login_attempt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_login_attempt_key_at", "login_attempt", ["key", "at"])
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("role", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rpps", sa.String(11), nullable=True))
        batch.add_column(sa.Column("address", sa.String(64), nullable=True))
        batch.add_column(sa.Column("session_ref", sa.String(32), nullable=True))
        batch.create_foreign_key("fk_audit_event_account", "account", ["account_id"], ["id"])
        batch.create_index("ix_audit_event_account_id", ["account_id"])
    op.create_table(
        "audit_seal",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Integer(), sa.ForeignKey("audit_event.id"), nullable=False, unique=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sealed_at", TS, nullable=False),
    )
    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_table(
        "config_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("applied_by", sa.String(100), nullable=False),
        sa.Column("applied_at", TS, nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
    )
    op.create_table(
        "stay",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("structure_id", sa.Integer(), sa.ForeignKey("structure.id"), nullable=False),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False, index=True),
        sa.Column("visit_number", sa.String(64), nullable=False),
        sa.Column("patient_class", sa.String(4), nullable=True),
        sa.Column("unit_code", sa.String(32), nullable=True),
        sa.Column("previous_unit_code", sa.String(32), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("structure_id", "visit_number", name="uq_stay_visit"),
    )
    op.create_index("ix_stay_unit_current", "stay", ["structure_id", "unit_code", "ended_at"])


def downgrade() -> None:
    for table in ("stay", "config_version", "audit_anchor", "audit_seal", "login_attempt", "api_token"):
        op.drop_table(table)
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_index("ix_audit_event_account_id")
        batch.drop_constraint("fk_audit_event_account", type_="foreignkey")
        for col in ("session_ref", "address", "rpps", "role", "account_id"):
            batch.drop_column(col)
    for table in ("web_session", "webauthn_credential", "account"):
        op.drop_table(table)
