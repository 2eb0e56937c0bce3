"""Relational model shared by SQLite (one machine) and PostgreSQL (many workers).

Every patient, document and figure belongs to one structure of the GHT, so every business table carries
``structure_id``; the legal entity (FINESS juridique) is reached through the site's ``parent_id``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Structure(Base):
    """A legal entity (kind ``EJ``, FINESS juridique) or a site (kind ``EG``, FINESS géographique)."""

    __tablename__ = "structure"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(2))
    finess: Mapped[str] = mapped_column(String(9), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("structure.id"))
    # The authority a DPI/GAM names in PID-3.4 for its IPPs (namespace and OID).
    ipp_authority: Mapped[str | None] = mapped_column(String(64))
    ipp_authority_oid: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)

    parent: Mapped[Structure | None] = relationship(remote_side=[id])
    units: Mapped[list[Unit]] = relationship(back_populates="site")


class Unit(Base):
    """Unité fonctionnelle (UF) of a site."""

    __tablename__ = "unit"
    __table_args__ = (UniqueConstraint("structure_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    site: Mapped[Structure] = relationship(back_populates="units")


class Professional(Base):
    __tablename__ = "professional"
    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    idnat_ps: Mapped[str] = mapped_column(String(20), unique=True)
    id_kind: Mapped[str] = mapped_column(String(8))  # RPPS, ADELI, RPPS+
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    profession: Mapped[str] = mapped_column(String(100))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("unit.id"))


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (
        Index("ix_patient_ins", "ins_matricule"),
        # Duplicate detection looks up same-site identities born the same day.
        Index("ix_patient_birth", "structure_id", "birth_date"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    ins_matricule: Mapped[str | None] = mapped_column(String(15))
    ins_oid: Mapped[str | None] = mapped_column(String(32))
    birth_name: Mapped[str] = mapped_column(String(100))
    first_names: Mapped[str] = mapped_column(String(200))
    used_name: Mapped[str | None] = mapped_column(String(100))
    used_first_name: Mapped[str | None] = mapped_column(String(100))
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1))
    birth_place: Mapped[str | None] = mapped_column(String(5))
    status: Mapped[str] = mapped_column(String(5), default="PROV")
    insi_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    document_checked: Mapped[str | None] = mapped_column(String(32))
    # Extra reliability attributes of HL7 table 0445 (DOUTE, FICTI…), kept apart from the 4 RNIV statuses.
    reliability: Mapped[str | None] = mapped_column(String(32))
    deceased: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    dmp_consent: Mapped[dict[str, Any]] = mapped_column(default=dict)
    insi_state: Mapped[dict[str, Any]] = mapped_column(
        default=dict
    )  # last INSi outcome, shown by the assistant
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    structure: Mapped[Structure] = relationship()
    identifiers: Mapped[list[PatientIdentifier]] = relationship(
        back_populates="patient", cascade="all, delete-orphan"
    )


class PatientIdentifier(Base):
    """Local identifiers (IPP per authority). The INS lives on the patient row, guarded by its status."""

    __tablename__ = "patient_identifier"
    __table_args__ = (UniqueConstraint("authority", "value", name="uq_identifier_authority_value"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    authority: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(64))
    type_code: Mapped[str] = mapped_column(String(8), default="PI")
    patient: Mapped[Patient] = relationship(back_populates="identifiers")


class IdentityEvent(Base):
    """Append-only history of what happened to an identity (feeds, INSi calls, document checks, merges)."""

    __tablename__ = "identity_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(100))
    status_before: Mapped[str | None] = mapped_column(String(5))
    status_after: Mapped[str | None] = mapped_column(String(5))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IdentityAlert(Base):
    __tablename__ = "identity_alert"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    other_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    kind: Mapped[str] = mapped_column(String(32))  # trait_conflict, duplicate, insi_unavailable, ins_conflict
    message: Mapped[str] = mapped_column(Text)
    open: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()


class Payload(Base):
    """Content-addressed raw bytes (messages, later CDA/PDF/mail), kept apart from metadata."""

    __tablename__ = "payload"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class InboundMessage(Base):
    __tablename__ = "inbound_message"
    __table_args__ = (UniqueConstraint("channel", "sender", "control_id", name="uq_inbound_control_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(200))
    control_id: Mapped[str] = mapped_column(String(64))
    message_type: Mapped[str] = mapped_column(String(32))
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structure.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    payload_sha256: Mapped[str] = mapped_column(ForeignKey("payload.sha256"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16))  # accepted, rejected
    ack_code: Mapped[str] = mapped_column(String(2))
    ack: Mapped[bytes] = mapped_column(LargeBinary)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Job(Base):
    """A unit of background work with lease, retries and a dead-letter state.

    ``key`` is the explicit idempotence key: enqueuing the same key twice yields one job.
    """

    __tablename__ = "job"
    # Claims read the due jobs of one lane in order (store.jobs.claim), expired leases by status.
    __table_args__ = (Index("ix_job_lane_ready", "status", "lane", "run_after"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    lane: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # store.jobs.Lane
    key: Mapped[str] = mapped_column(String(200), unique=True)
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structure.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(8), default="pending")  # pending, running, done, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column()
    worker: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    """Who saw or changed which patient's data, when and why. Append-only: no code path updates a row."""

    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    reason: Mapped[str | None] = mapped_column(
        String(200)
    )  # the purpose: soins, bris de glace, administration…
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Who exactly and from where, for entries made on behalf of a logged-in person or a system token.
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id"), index=True)
    role: Mapped[str | None] = mapped_column(String(64))
    rpps: Mapped[str | None] = mapped_column(String(11))
    address: Mapped[str | None] = mapped_column(String(64))
    session_ref: Mapped[str | None] = mapped_column(String(32))  # web_session.id or token:<id>


class Document(Base):
    """A clinical document received from a hospital system (HL7 MDM/ORU or REST), and where it stands.

    ``status`` is what the flow view shows: received → validated → waiting_identity → sent → acknowledged, or
    rejected / error, with ``held`` set while a professional retains it.
    """

    __tablename__ = "document"
    __table_args__ = (
        UniqueConstraint("structure_id", "unique_id", "kind", name="uq_document_unique_kind"),
        Index("ix_document_patient", "patient_id"),
        Index("ix_document_status", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    inbound_message_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))
    source: Mapped[str] = mapped_column(String(8))  # hl7, rest, mhd, mssante
    kind: Mapped[str] = mapped_column(String(12))  # initial, replacement, deletion
    unique_id: Mapped[str] = mapped_column(String(128))
    set_id: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer)
    parent_unique_id: Mapped[str | None] = mapped_column(String(128))
    type_code: Mapped[str | None] = mapped_column(String(32))
    title: Mapped[str | None] = mapped_column(String(300))
    payload_sha256: Mapped[str | None] = mapped_column(ForeignKey("payload.sha256"))
    mime_type: Mapped[str] = mapped_column(String(64), default="text/xml")
    size: Mapped[int] = mapped_column(Integer, default=0)
    ins_matricule: Mapped[str | None] = mapped_column(String(15))
    ins_oid: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20), default="received")
    status_reason: Mapped[str | None] = mapped_column(Text)
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    flags: Mapped[dict[str, Any]] = mapped_column(default=dict)  # MetaDMPMSS and routing
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)  # sender, visit, ZAM return address
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="document")


class Delivery(Base):
    """One document to one destination. ``key`` (uniqueId + destination + action) makes delivery idempotent."""

    __tablename__ = "delivery"
    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("document.id"), index=True)
    destination: Mapped[str] = mapped_column(String(16))  # DMP, MSSANTE_PS, MSSANTE_PAT
    action: Mapped[str] = mapped_column(String(16))  # register, replace, delete, visibility
    key: Mapped[str] = mapped_column(String(300), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    entry_uuid: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    document: Mapped[Document] = relationship(back_populates="deliveries")


class Exchange(Base):
    """Each request a delivery made and the answer it got, kept for the flow view and for disputes."""

    __tablename__ = "exchange"
    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id"), index=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("document.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    transaction: Mapped[str] = mapped_column(String(16))  # ITI-41, ITI-18, ITI-57, ZAM
    endpoint: Mapped[str] = mapped_column(String(300))
    request_sha256: Mapped[str | None] = mapped_column(ForeignKey("payload.sha256"))
    response_sha256: Mapped[str | None] = mapped_column(ForeignKey("payload.sha256"))
    http_status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class Mail(Base):
    """One MSSanté mail, sent or received. The raw MIME is a payload; nothing received is ever dropped.

    ``key`` makes both directions idempotent: ``out:<delivery id>`` for a document mail (one per delivery, so a
    retry after a crash finds the mail it already sent), ``in:<mailbox>:<Message-ID or sha256>`` for a poll.
    """

    __tablename__ = "mail"
    id: Mapped[int] = mapped_column(primary_key=True)
    direction: Mapped[str] = mapped_column(String(3))  # out, in
    key: Mapped[str] = mapped_column(String(400), unique=True)
    mailbox: Mapped[str] = mapped_column(String(254), index=True)  # our address: sender (out) or polled (in)
    message_id: Mapped[str | None] = mapped_column(String(300), index=True)
    sender: Mapped[str | None] = mapped_column(String(254))
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(String(500))
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structure.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("document.id"), index=True)
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id"), index=True)
    payload_sha256: Mapped[str | None] = mapped_column(ForeignKey("payload.sha256"))
    # out: pending, sending, sent, delivered, failed, read, cancelled; in: received, integrated, triage, rejected
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    mdn_code: Mapped[str | None] = mapped_column(String(8))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LabResult(Base):
    """One structured biology result (CR-BIO level 3 observation) in a patient's record."""

    __tablename__ = "lab_result"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("document.id"), index=True)
    loinc: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(300))
    value: Mapped[str | None] = mapped_column(String(100))
    value_num: Mapped[float | None] = mapped_column()
    unit: Mapped[str | None] = mapped_column(String(40))
    reference_low: Mapped[float | None] = mapped_column()
    reference_high: Mapped[float | None] = mapped_column()
    reference_text: Mapped[str | None] = mapped_column(String(200))
    # HL7 ObservationInterpretation: N, H, L, HH…
    interpretation: Mapped[str | None] = mapped_column(String(8))
    observed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Stay(Base):
    """A patient's stay or visit as the PAM FR movements describe it (PV1-19 / ZBE): where the patient is cared
    for now. The care relationship of the authorisation matrix reads it: a unit-scoped professional sees the
    patients with a current stay in one of their units."""

    __tablename__ = "stay"
    __table_args__ = (
        UniqueConstraint("structure_id", "visit_number", name="uq_stay_visit"),
        Index("ix_stay_unit_current", "structure_id", "unit_code", "ended_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    visit_number: Mapped[str] = mapped_column(String(64))
    patient_class: Mapped[str | None] = mapped_column(String(4))  # PV1-2: I, O, E, R…
    unit_code: Mapped[str | None] = mapped_column(String(32))  # the UF where the patient is now
    previous_unit_code: Mapped[str | None] = mapped_column(
        String(32)
    )  # before the last transfer (A12 undoes it)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()  # discharge (A03); None while the stay is current
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ImagingManifest(Base):
    """A KOS manifest this DRIMbox published to the DMP for an imaging report: kept to replace or withdraw it,
    and to check that another DRIMbox asking for a series names a manifest that covers it."""

    __tablename__ = "imaging_manifest"
    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("document.id"), index=True)  # the imaging report
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)  # the KOS; its DMP uniqueId
    series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    entry_uuid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="published")  # published, replaced, withdrawn
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImagingRejection(Base):
    """An instance the PACS withdrew (IOCM Rejection Note): left out of every manifest published after."""

    __tablename__ = "imaging_rejection"
    __table_args__ = (UniqueConstraint("study_instance_uid", "sop_instance_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))  # CID 7011 code
    note_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImagingFetch(Base):
    """An exam of another hospital this DRIMbox's consumer retrieved, or is retrieving, into its image cache: one
    per KOS manifest. Its status follows ``flows.drimbox_cache.FETCH_TRANSITIONS``; only a complete one is shown."""

    __tablename__ = "imaging_fetch"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    kos_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)  # the manifest's DMP uniqueId
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str | None] = mapped_column(String(200))  # the source DRIMbox's host
    status: Mapped[str] = mapped_column(String(16))
    instances_expected: Mapped[int] = mapped_column(Integer, default=0)
    instances_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # the retrieval's last progress
    completed_at: Mapped[datetime | None] = mapped_column()
    last_access_at: Mapped[datetime] = mapped_column(default=utcnow)  # last looked at: the purge's order


class DmpListing(Base):
    """The list of a patient's DMP documents one professional last saw (PDSM4DMP: kept, with each document's
    entryUUID, logicalId and uniqueId, so that a later opening asks only what changed since ``fetched_at``).
    One per patient and professional: what the DMP shows depends on who asks (a document masked to professionals
    is still shown to its author)."""

    __tablename__ = "dmp_listing"
    __table_args__ = (
        UniqueConstraint("patient_id", "rpps", name="uq_dmp_listing_patient_rpps"),
        Index("ix_dmp_listing_searched_at", "searched_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    rpps: Mapped[str] = mapped_column(String(11))
    fetched_at: Mapped[datetime] = mapped_column()  # when the DMP was asked: the next delta's lower bound
    since: Mapped[datetime | None] = mapped_column()  # the list's bound on the acts' date
    searched_at: Mapped[datetime] = mapped_column()  # the last complete search (FindDocuments)
    origin: Mapped[str] = mapped_column(String(16))  # « admission » (prefetched) or « consultation »
    documents: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Account(Base):
    """A person who may log in: a local account (argon2 hash and second factor), or one known by its identity
    provider's subject (hospital SSO, Pro Santé Connect). ``assignments`` are the (role, scope) pairs of the
    authorisation matrix: scope ``ght``, ``site:<FINESS>`` or ``unit:<FINESS>/<UF code>``."""

    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    rpps: Mapped[str | None] = mapped_column(String(11), index=True)
    assignments: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_last_step: Mapped[int | None] = mapped_column(Integer)  # a code is accepted once
    recovery_codes: Mapped[list[str]] = mapped_column(JSON, default=list)  # argon2 hashes, each used once
    psc_sub: Mapped[str | None] = mapped_column(String(200), unique=True)  # e-CPS linked to this account
    sso_sub: Mapped[str | None] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(16), default="local")  # local, hr, scim, demo
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    departed_at: Mapped[datetime | None] = mapped_column()
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    last_login_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebauthnCredential(Base):
    """A FIDO2 security key enrolled by an account; ``sign_count`` refuses a replayed assertion."""

    __tablename__ = "webauthn_credential"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(400), unique=True)  # base64url
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class WebSession(Base):
    """A server-side login session. The cookie carries a random secret; only its SHA-256 is stored here."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))  # password, password+totp, password+webauthn, psc, sso
    strong: Mapped[bool] = mapped_column(Boolean, default=False)
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()  # absolute expiry
    revoked_at: Mapped[datetime | None] = mapped_column()


class ApiToken(Base):
    """A system account's bearer token (REST, FHIR MHD integrations). Only its SHA-256 is stored."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(100), default="ght")
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class LoginAttempt(Base):
    """Failed logins and second-factor attempts, counted per account and per address for rate limiting."""

    __tablename__ = "login_attempt"
    __table_args__ = (Index("ix_login_attempt_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200))  # "account:<login>", "address:<ip>", "totp:<account id>"
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditSeal(Base):
    """Position and hash of each sealed audit entry: the tamper-evident chain over ``audit_event``.

    Entries are sealed in commit order by one sealer (the chain cannot follow ids, which PostgreSQL hands out
    before commit); ``hash`` = SHA-256(previous hash ‖ canonical entry)."""

    __tablename__ = "audit_seal"
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(ForeignKey("audit_event.id"), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditAnchor(Base):
    """The chain head, written periodically (and to a file beside the database): a later rewrite of the whole
    chain from some point on no longer matches an anchor."""

    __tablename__ = "audit_anchor"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ConfigVersion(Base):
    """Every applied version of the hospital's configuration directory: content hash, who, when, and the files."""

    __tablename__ = "config_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    applied_by: Mapped[str] = mapped_column(String(100))
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(500))  # the directory it was read from
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)  # relative path -> text


class AuthFlow(Base):
    """A login under way that another request finishes (OpenID Connect state, nonce and PKCE verifier): kept in
    the shared database so that any serving host can finish it, and deleted by the request that uses it."""

    __tablename__ = "auth_flow"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires_at: Mapped[datetime] = mapped_column(index=True)
