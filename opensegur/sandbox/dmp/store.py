"""Persistent registry + repository of the DMP sandbox (SQLite under the sandbox data directory).

The tables live in their own SQLAlchemy ``MetaData`` and their own file (``dmp-sandbox.db``): the sandbox plays a
remote national service, so it must never share a schema or a transaction with the platform it is testing.

Registry rules that need the stored state (duplicate uniqueIds, RPLC targets, authorship of deletions, metadata
versions) are enforced here, under one lock, so two concurrent submissions of the same uniqueId cannot both pass
the duplicate check. The DMP has no physical delete: a deleted entry keeps its row with the status ``Deleted``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping

from opensegur.documents.metadata import (
    DocumentMetadata,
    SubmissionSetMetadata,
    author_from_dict,
    coded_from_dict,
    metadata_from_json,
    metadata_to_json,
    xcn_id,
    xon_id,
)
from opensegur.transactions.xds import (
    ASSOC_HAS_MEMBER,
    ASSOC_UPDATE_AVAILABILITY,
    Association,
    ProvideAndRegister,
    UpdateDocumentSet,
    XdsError,
)

__all__ = [
    "DB_FILENAME",
    "ERR_FORBIDDEN",
    "STATUS_DELETED_URN",
    "Caller",
    "DmpStore",
    "StoredEntry",
    "status_short",
]

DB_FILENAME = "dmp-sandbox.db"
# Status URN of a deleted DMP entry (CI-SIS namespace, as the platform's DMP client sends it).
STATUS_DELETED_URN = "urn:asip:ci-sis:2010:StatusType:Deleted"
# Sandbox code (the DMP guide's codes are not public): the caller is not the author of the entry it modifies.
ERR_FORBIDDEN = "DMP_SBX_NON_AUTORISE"

metadata = MetaData()

entries = Table(
    "dmp_entries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_uuid", String(64), nullable=False, unique=True),
    Column("logical_id", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("unique_id", String(200), nullable=False, index=True),
    Column("patient_cx", String(100), nullable=False),
    Column("patient_matricule", String(15), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("is_signature", Integer, nullable=False, default=0),
    Column("metadata_json", Text, nullable=False),
    Column("mime_type", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha1", String(40), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("author_ps", String(64)),
    Column("author_structure", String(64)),
    Column("submitter_subject", String(200), nullable=False),
    Column("submitter_structure", String(64), nullable=False),
    Column("submission_set_uuid", String(64), nullable=False),
    Column("submission_time", String(14), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    # One version per (uniqueId, version): metadata updates add versions of the same uniqueId.
    UniqueConstraint("unique_id", "version", name="uq_dmp_entries_unique_version"),
)

submission_sets = Table(
    "dmp_submission_sets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("entry_uuid", String(64), nullable=False, unique=True),
    Column("unique_id", String(200), nullable=False, unique=True),
    Column("patient_cx", String(100), nullable=False),
    Column("patient_matricule", String(15), nullable=False, index=True),
    Column("source_id", String(200), nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("submission_time", String(14), nullable=False),
    Column("transaction", String(16), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

associations = Table(
    "dmp_associations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("assoc_uuid", String(64), nullable=False, unique=True),
    Column("type", String(120), nullable=False),
    Column("source", String(64), nullable=False, index=True),
    Column("target", String(64), nullable=False, index=True),
    Column("slots_json", Text, nullable=False),
)

access_log = Table(
    "dmp_access_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("patient_matricule", String(15), nullable=False, index=True),
    Column("transaction", String(16), nullable=False),
    Column("subject_id", String(200), nullable=False),
    Column("subject_name", String(400), nullable=False),
    Column("structure_id", String(64), nullable=False),
    Column("authentication_mode", String(32), nullable=False),
    Column("purpose_of_use", String(32), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)


# Statements built once: building one per row (``insert().values(...)``) cost more CPU than SQLite executing it.
_INSERT_ENTRY = insert(entries)
_INSERT_SUBMISSION_SET = insert(submission_sets)
_INSERT_ASSOCIATION = insert(associations)
_INSERT_ACCESS = insert(access_log)
_ENTRIES_TAKEN = select(entries.c.unique_id, entries.c.entry_uuid).where(
    or_(
        entries.c.unique_id.in_(bindparam("unique_ids", expanding=True)),
        entries.c.entry_uuid.in_(bindparam("entry_uuids", expanding=True)),
    )
)
_SET_UNIQUE_ID_TAKEN = select(submission_sets.c.id).where(
    submission_sets.c.unique_id == bindparam("unique_id")
)
_ENTRY_UUID_TAKEN = select(entries.c.id).where(entries.c.entry_uuid == bindparam("entry_uuid"))
_ENTRY_BY_UUID = select(entries).where(entries.c.entry_uuid == bindparam("entry_uuid"))


@dataclass(frozen=True)
class Caller:
    """The verified VIHF's view of who calls (what authorisation and the access history need)."""

    subject_id: str
    subject_name: str
    structure_id: str
    authentication_mode: str
    purpose_of_use: str
    patient_cx: str


@dataclass
class StoredEntry:
    metadata: DocumentMetadata  # with entry_uuid, lid, version, status and repositoryUniqueId filled
    status: str  # Approved | Deprecated | Deleted
    is_signature: bool
    sha256: str
    author_ps: str | None
    author_structure: str | None
    submitter_structure: str
    submission_time: str
    submission_set_uuid: str

    @property
    def entry_uuid(self) -> str:
        return self.metadata.entry_uuid or ""

    def authored_by(self, caller: Caller) -> bool:
        return bool(
            (self.author_ps and caller.subject_id == self.author_ps)
            or caller.structure_id in {s for s in (self.author_structure, self.submitter_structure) if s}
        )


def _submission_set_from_json(text: str) -> SubmissionSetMetadata:
    d = json.loads(text)
    d["content_type_code"] = coded_from_dict(d["content_type_code"])
    d["authors"] = [author_from_dict(a) for a in d.get("authors", [])]
    return SubmissionSetMetadata(**d)


def _author_ids(m: DocumentMetadata) -> tuple[str | None, str | None]:
    ps = next((xcn_id(a.person) for a in m.authors if xcn_id(a.person)), None)
    structure = next((xon_id(i) for a in m.authors for i in a.institutions if xon_id(i)), None)
    return ps, structure


def status_short(status: str) -> str:
    return status.rsplit(":", 1)[-1]


def _status_for_render(status: str) -> str:
    return STATUS_DELETED_URN if status == "Deleted" else status


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


class DmpStore:
    def __init__(self, data_dir: Path, repository_unique_id: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.blob_dir = data_dir / "dmp-blobs"
        self.blob_dir.mkdir(exist_ok=True)
        self.repository_unique_id = repository_unique_id
        self.engine: Engine = create_engine(
            f"sqlite:///{data_dir / DB_FILENAME}", connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        metadata.create_all(self.engine)
        # Check-then-insert sequences (duplicates, versions) must not interleave between threads.
        self._lock = threading.RLock()

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------------ blobs

    def _write_blob(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        path = self.blob_dir / digest
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.blob_dir, prefix=".blob.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def content(self, entry: StoredEntry) -> bytes:
        return (self.blob_dir / entry.sha256).read_bytes()

    # ------------------------------------------------------------------------------------------------ reads

    def _entry(self, row: RowMapping) -> StoredEntry:
        m = metadata_from_json(row["metadata_json"])
        m.entry_uuid = row["entry_uuid"]
        m.logical_id = row["logical_id"]
        m.version = str(row["version"])
        m.availability_status = _status_for_render(row["status"])
        m.repository_unique_id = self.repository_unique_id
        m.size = row["size"]
        m.hash_sha1 = row["sha1"]
        return StoredEntry(
            metadata=m,
            status=row["status"],
            is_signature=bool(row["is_signature"]),
            sha256=row["sha256"],
            author_ps=row["author_ps"],
            author_structure=row["author_structure"],
            submitter_structure=row["submitter_structure"],
            submission_time=row["submission_time"],
            submission_set_uuid=row["submission_set_uuid"],
        )

    def find_entries(
        self,
        *,
        patient_cx: str | None = None,
        patient_matricule: str | None = None,
        entry_uuids: Sequence[str] | None = None,
        unique_ids: Sequence[str] | None = None,
        logical_ids: Sequence[str] | None = None,
        statuses: Iterable[str] | None = None,
    ) -> list[StoredEntry]:
        q = select(entries)
        if patient_cx is not None:
            q = q.where(entries.c.patient_cx == patient_cx)
        if patient_matricule is not None:
            q = q.where(entries.c.patient_matricule == patient_matricule)
        if entry_uuids is not None:
            q = q.where(entries.c.entry_uuid.in_(list(entry_uuids)))
        if unique_ids is not None:
            q = q.where(entries.c.unique_id.in_(list(unique_ids)))
        if logical_ids is not None:
            q = q.where(entries.c.logical_id.in_(list(logical_ids)))
        if statuses is not None:
            q = q.where(entries.c.status.in_([status_short(s) for s in statuses]))
        # Approved first, then the most recent version: a lookup by uniqueId gets the live version first.
        q = q.order_by((entries.c.status != "Approved"), entries.c.version.desc(), entries.c.id)
        with self.engine.connect() as conn:
            return [self._entry(r) for r in conn.execute(q).mappings()]

    def find_submission_sets(
        self, *, patient_cx: str | None = None, entry_uuids: Sequence[str] | None = None
    ) -> list[SubmissionSetMetadata]:
        q = select(submission_sets)
        if patient_cx is not None:
            q = q.where(submission_sets.c.patient_cx == patient_cx)
        if entry_uuids is not None:
            q = q.where(submission_sets.c.entry_uuid.in_(list(entry_uuids)))
        with self.engine.connect() as conn:
            out = []
            for r in conn.execute(q.order_by(submission_sets.c.id)).mappings():
                ss = _submission_set_from_json(r["metadata_json"])
                ss.entry_uuid = r["entry_uuid"]
                out.append(ss)
            return out

    def find_associations(self, object_ids: Sequence[str]) -> list[Association]:
        ids = list(object_ids)
        q = (
            select(associations)
            .where(or_(associations.c.source.in_(ids), associations.c.target.in_(ids)))
            .order_by(associations.c.id)
        )
        with self.engine.connect() as conn:
            return [
                Association(r["type"], r["source"], r["target"], r["assoc_uuid"], json.loads(r["slots_json"]))
                for r in conn.execute(q).mappings()
            ]

    # ------------------------------------------------------------------------------------------------ writes

    def _check_set_unique_id(self, conn: Connection, ss: SubmissionSetMetadata) -> None:
        if conn.execute(_SET_UNIQUE_ID_TAKEN, {"unique_id": ss.unique_id}).first() is not None:
            raise XdsError(
                "XDSDuplicateUniqueIdInRegistry",
                f"uniqueId de lot {ss.unique_id} déjà présent dans le registre",
                ss.entry_uuid or "",
            )

    @staticmethod
    def _submission_set_row(ss: SubmissionSetMetadata, matricule: str, transaction: str) -> dict[str, Any]:
        return {
            "entry_uuid": ss.entry_uuid,
            "unique_id": ss.unique_id,
            "patient_cx": ss.patient_id,
            "patient_matricule": matricule,
            "source_id": ss.source_id,
            "metadata_json": metadata_to_json(ss),
            "submission_time": ss.submission_time,
            "transaction": transaction,
            "recorded_at": _now(),
        }

    @staticmethod
    def _association_row(a: Association) -> dict[str, Any]:
        return {
            "assoc_uuid": a.id if a.id.startswith("urn:uuid:") else _new_uuid(),
            "type": a.type,
            "source": a.source,
            "target": a.target,
            "slots_json": json.dumps(a.slots, ensure_ascii=False),
        }

    def _insert_submission_set(
        self, conn: Connection, ss: SubmissionSetMetadata, matricule: str, transaction: str
    ) -> None:
        self._check_set_unique_id(conn, ss)
        conn.execute(_INSERT_SUBMISSION_SET, self._submission_set_row(ss, matricule, transaction))

    def _insert_association(self, conn: Connection, a: Association) -> None:
        conn.execute(_INSERT_ASSOCIATION, self._association_row(a))

    def _load_one(self, conn: Connection, entry_uuid: str) -> StoredEntry | None:
        row = conn.execute(_ENTRY_BY_UUID, {"entry_uuid": entry_uuid}).mappings().first()
        return self._entry(row) if row is not None else None

    def register(self, sub: ProvideAndRegister, caller: Caller, matricule: str) -> list[str]:
        """Record an ITI-41 submission (already validated); return the stored entry UUIDs."""
        # The registry owns identifiers: symbolic ids ("Document01") are replaced by UUIDs, and every
        # reference to them in the associations follows.
        ids: dict[str, str] = {}

        def real(obj_id: str | None) -> str:
            obj_id = obj_id or ""
            if obj_id.startswith("urn:uuid:"):
                return obj_id
            return ids.setdefault(obj_id, _new_uuid())

        ss = dataclasses.replace(sub.submission_set, entry_uuid=real(sub.submission_set.entry_uuid))
        docs = [(d, False) for d in sub.documents]
        if sub.signature is not None:
            docs.append((sub.signature, True))
        entry_uuids = [real(d.metadata.entry_uuid) for d, _sig in docs]
        with self._lock, self.engine.begin() as conn:
            # One query for every identifier of the submission; errors are then reported in document order.
            taken = conn.execute(
                _ENTRIES_TAKEN,
                {"unique_ids": [d.metadata.unique_id for d, _sig in docs], "entry_uuids": entry_uuids},
            ).all()
            taken_unique_ids = {r.unique_id for r in taken}
            taken_entry_uuids = {r.entry_uuid for r in taken}
            for (d, _sig), entry_uuid in zip(docs, entry_uuids, strict=True):
                m = d.metadata
                if m.unique_id in taken_unique_ids:
                    raise XdsError(
                        "XDSDuplicateUniqueIdInRegistry",
                        f"uniqueId {m.unique_id} déjà présent dans le DMP",
                        m.entry_uuid or "",
                    )
                if entry_uuid in taken_entry_uuids:
                    raise XdsError("XDSRegistryError", f"entryUUID {m.entry_uuid} déjà utilisé", m.unique_id)
            replaced: list[StoredEntry] = []
            for new_id, old_id in sub.replaces.items():
                old = self._load_one(conn, old_id)
                if old is None:
                    raise XdsError(
                        "XDSUnresolvedReferenceException", f"l'entrée remplacée {old_id} est inconnue", new_id
                    )
                if old.metadata.patient_id != ss.patient_id:
                    raise XdsError(
                        "XDSPatientIdDoesNotMatch",
                        "le document remplacé appartient à un autre patient",
                        old_id,
                    )
                if old.status != "Approved" or old.is_signature:
                    raise XdsError(
                        "XDSRegistryError",
                        f"l'entrée remplacée {old_id} n'est pas un document Approved (statut {old.status})",
                        old_id,
                    )
                replaced.append(old)
            self._insert_submission_set(conn, ss, matricule, "iti41")
            now = _now()
            rows: list[dict[str, Any]] = []
            for (d, is_sig), entry_uuid in zip(docs, entry_uuids, strict=True):
                m = d.metadata
                author_ps, author_structure = _author_ids(m)
                # The XDS reader refused a hash that differs from the content's, so a given one needs no recompute.
                sha1 = m.hash_sha1.lower() if m.hash_sha1 else hashlib.sha1(d.content).hexdigest()
                rows.append(
                    {
                        "entry_uuid": entry_uuid,
                        "logical_id": entry_uuid,  # a new document (or a replacement) starts a new logical id
                        "version": 1,
                        "unique_id": m.unique_id,
                        "patient_cx": m.patient_id,
                        "patient_matricule": matricule,
                        "status": "Approved",
                        "is_signature": int(is_sig),
                        "metadata_json": metadata_to_json(m),
                        "mime_type": m.mime_type,
                        "size": len(d.content),
                        "sha1": sha1,
                        "sha256": self._write_blob(d.content),
                        "author_ps": author_ps,
                        "author_structure": author_structure,
                        "submitter_subject": caller.subject_id,
                        "submitter_structure": caller.structure_id,
                        "submission_set_uuid": ss.entry_uuid,
                        "submission_time": ss.submission_time,
                        "recorded_at": now,
                    }
                )
            conn.execute(_INSERT_ENTRY, rows)
            if sub.associations:
                conn.execute(
                    _INSERT_ASSOCIATION,
                    [
                        self._association_row(
                            dataclasses.replace(a, source=real(a.source), target=real(a.target))
                        )
                        for a in sub.associations
                    ],
                )
            for old in replaced:
                conn.execute(
                    update(entries).where(entries.c.entry_uuid == old.entry_uuid).values(status="Deprecated")
                )
            return [row["entry_uuid"] for row in rows]

    def update(self, upd: UpdateDocumentSet, caller: Caller, matricule: str) -> None:
        """Apply an ITI-57 request: confidentiality versions and status changes (deletion by the author)."""
        ss = upd.submission_set
        with self._lock, self.engine.begin() as conn:
            self._insert_submission_set(conn, ss, matricule, "iti57")
            for m, previous_version in upd.metadata_updates:
                current = (
                    conn.execute(
                        select(entries).where(
                            entries.c.logical_id == m.logical_id, entries.c.status == "Approved"
                        )
                    )
                    .mappings()
                    .first()
                )
                if current is None:
                    raise XdsError(
                        "XDSMetadataUpdateError",
                        f"aucune version Approved pour le lid {m.logical_id}",
                        m.entry_uuid or "",
                    )
                prev = self._entry(current)
                if str(prev.metadata.version) != previous_version.strip():
                    raise XdsError(
                        "XDSMetadataVersionError",
                        f"PreviousVersion {previous_version} ≠ version courante {prev.metadata.version}",
                        m.entry_uuid or "",
                    )
                if prev.metadata.patient_id != ss.patient_id:
                    raise XdsError(
                        "XDSPatientIdDoesNotMatch",
                        "l'entrée appartient à un autre patient",
                        m.logical_id or "",
                    )
                if not prev.authored_by(caller):
                    raise XdsError(
                        ERR_FORBIDDEN,
                        "seul l'auteur du document (même idNat_PS ou même structure) peut en changer la visibilité",
                        m.logical_id or "",
                    )
                _check_confidentiality_only(prev.metadata, m)
                if conn.execute(_ENTRY_UUID_TAKEN, {"entry_uuid": m.entry_uuid or ""}).first() is not None:
                    raise XdsError("XDSRegistryError", f"entryUUID {m.entry_uuid} déjà utilisé", m.unique_id)
                new_meta = dataclasses.replace(
                    prev.metadata, confidentiality_codes=list(m.confidentiality_codes)
                )
                new_uuid = (
                    m.entry_uuid if m.entry_uuid and m.entry_uuid.startswith("urn:uuid:") else _new_uuid()
                )
                conn.execute(
                    update(entries).where(entries.c.entry_uuid == prev.entry_uuid).values(status="Deprecated")
                )
                old_row = dict(current)
                old_row.pop("id")
                old_row.update(
                    entry_uuid=new_uuid,
                    version=int(old_row["version"]) + 1,
                    status="Approved",
                    metadata_json=metadata_to_json(new_meta),
                    submission_set_uuid=ss.entry_uuid,
                    submission_time=ss.submission_time,
                    recorded_at=_now(),
                )
                conn.execute(_INSERT_ENTRY, old_row)
                self._insert_association(
                    conn,
                    Association(
                        ASSOC_HAS_MEMBER,
                        ss.entry_uuid or "",
                        new_uuid,
                        slots={"SubmissionSetStatus": ["Original"], "PreviousVersion": [previous_version]},
                    ),
                )
            for u in upd.status_updates:
                target = self._load_one(conn, u.target)
                if target is None:
                    row = (
                        conn.execute(
                            select(entries)
                            .where(entries.c.logical_id == u.target)
                            .order_by(entries.c.version.desc())
                        )
                        .mappings()
                        .first()
                    )
                    target = self._entry(row) if row is not None else None
                if target is None:
                    raise XdsError("XDSUnresolvedReferenceException", f"entrée {u.target} inconnue", u.target)
                if target.metadata.patient_id != ss.patient_id:
                    raise XdsError(
                        "XDSPatientIdDoesNotMatch", "l'entrée appartient à un autre patient", u.target
                    )
                if status_short(u.original_status) != target.status:
                    raise XdsError(
                        "XDSMetadataUpdateError",
                        f"OriginalStatus {status_short(u.original_status)} ≠ statut courant {target.status}",
                        u.target,
                    )
                new_status = status_short(u.new_status)
                if new_status not in ("Deleted", "Deprecated"):
                    raise XdsError(
                        "XDSMetadataUpdateError",
                        f"changement de statut vers {new_status} non pris en charge par le DMP",
                        u.target,
                    )
                if not target.authored_by(caller):
                    raise XdsError(
                        ERR_FORBIDDEN,
                        "seul l'auteur du document (même idNat_PS ou même structure) peut le supprimer",
                        u.target,
                    )
                conn.execute(
                    update(entries).where(entries.c.entry_uuid == target.entry_uuid).values(status=new_status)
                )
                self._insert_association(
                    conn,
                    Association(
                        ASSOC_UPDATE_AVAILABILITY,
                        ss.entry_uuid or "",
                        target.entry_uuid,
                        slots={"OriginalStatus": [u.original_status], "NewStatus": [u.new_status]},
                    ),
                )

    # ------------------------------------------------------------------------------------------ access history

    def log_access(
        self, caller: Caller, matricule: str, transaction: str, outcome: str, detail: str = ""
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT_ACCESS,
                {
                    "at": _now(),
                    "patient_matricule": matricule,
                    "transaction": transaction,
                    "subject_id": caller.subject_id,
                    "subject_name": caller.subject_name,
                    "structure_id": caller.structure_id,
                    "authentication_mode": caller.authentication_mode,
                    "purpose_of_use": caller.purpose_of_use,
                    "outcome": outcome,
                    "detail": detail[:2000],
                },
            )

    def access_history(self, matricule: str) -> list[dict[str, Any]]:
        q = select(access_log).where(access_log.c.patient_matricule == matricule).order_by(access_log.c.id)
        with self.engine.connect() as conn:
            return [
                {
                    "at": _iso(r["at"]),
                    "transaction": r["transaction"],
                    "subject": {"id": r["subject_id"], "name": r["subject_name"]},
                    "structure": r["structure_id"],
                    "authentication_mode": r["authentication_mode"],
                    "purpose_of_use": r["purpose_of_use"],
                    "outcome": r["outcome"],
                    "detail": r["detail"],
                }
                for r in conn.execute(q).mappings()
            ]

    def inspect(self, matricule: str) -> list[dict[str, Any]]:
        out = []
        for e in self.find_entries(patient_matricule=matricule):
            m = e.metadata
            out.append(
                {
                    "uniqueId": m.unique_id,
                    "entryUUID": e.entry_uuid,
                    "logicalId": m.logical_id,
                    "version": int(m.version or 1),
                    "status": e.status,
                    "isSubmissionSetSignature": e.is_signature,
                    "typeCode": {"code": m.type_code.code, "scheme": m.type_code.scheme},
                    "classCode": {"code": m.class_code.code, "scheme": m.class_code.scheme},
                    "confidentialityCodes": [c.code for c in m.confidentiality_codes],
                    "mimeType": m.mime_type,
                    "size": m.size,
                    "hash": m.hash_sha1,
                    "submissionTime": e.submission_time,
                    "authorPs": e.author_ps,
                    "authorStructure": e.author_structure,
                    "submitterStructure": e.submitter_structure,
                }
            )
        out.sort(key=lambda d: (d["submissionTime"], d["version"]))
        return out


def _iso(value: dt.datetime) -> str:
    # SQLite hands back naive datetimes; they were written in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


_IMMUTABLE = (
    "unique_id",
    "patient_id",
    "mime_type",
    "class_code",
    "type_code",
    "format_code",
    "healthcare_facility_type_code",
    "practice_setting_code",
    "creation_time",
)


def _check_confidentiality_only(prev: DocumentMetadata, new: DocumentMetadata) -> None:
    """TD3.3a/b only change visibility; anything else calls for a replacement (ITI-41 RPLC), not an update."""
    changed = [name for name in _IMMUTABLE if getattr(prev, name) != getattr(new, name)]
    if changed:
        raise XdsError(
            "XDSMetadataUpdateError",
            f"une mise à jour DMP ne modifie que confidentialityCode ; modifié : {', '.join(changed)}",
            new.entry_uuid or "",
        )
    if {(c.code, c.scheme) for c in prev.confidentiality_codes} == {
        (c.code, c.scheme) for c in new.confidentiality_codes
    }:
        raise XdsError(
            "XDSMetadataUpdateError", "la mise à jour ne change pas la confidentialité", new.unique_id
        )
