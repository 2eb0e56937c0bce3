"""Flow: the identity-vigilance assistant — INSi search, comparison, document check, qualification, merge.

INSi is reached through the small ``InsiPort`` interface so this flow never depends on the SOAP connector.
When INSi is unreachable the identity keeps its status, a retried job takes over and the page says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.errors import RetryLater
from opensegur.flows.identity_feed import close_alerts, merge_into, raise_alert
from opensegur.flows.identity_gate import release_waiting_documents
from opensegur.flows.jobs import JobKind
from opensegur.flows.worker import PermanentError
from opensegur.identity import rniv
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.identity.traits import StrictTraits
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import AuditEvent, IdentityEvent, Job, Patient, utcnow
from opensegur.transactions.insi import InsiResult, InsiTraitsQuery

log = logging.getLogger(__name__)


class InsiUnavailableError(RetryLater):
    """Raised by an InsiPort when the teleservice cannot be reached (timeouts, 5xx): worth retrying."""


class InsiPort(Protocol):
    async def search_by_traits(self, q: InsiTraitsQuery) -> InsiResult: ...


def state_of(p: Patient) -> rniv.IdentityState:
    return rniv.IdentityState(rniv.IdentityStatus(p.status), p.insi_verified, p.document_checked)


def traits_of(p: Patient) -> StrictTraits:
    return StrictTraits.build(p.birth_name, p.first_names, p.birth_date or "", p.sex, p.birth_place)


def _transition(
    s: Session, p: Patient, new: rniv.IdentityState, kind: str, actor: str, detail: dict[str, Any]
) -> None:
    before = p.status
    p.status = new.status.value
    p.insi_verified = new.insi_verified
    p.document_checked = new.document_checked
    if not rniv.may_transmit_ins(new.status) and not new.insi_verified:
        # Without an INSi match the matricule is not ours to keep.
        p.ins_matricule = None
        p.ins_oid = None
    s.add(
        IdentityEvent(
            patient_id=p.id,
            kind=kind,
            actor=actor,
            status_before=before,
            status_after=p.status,
            detail=detail,
        )
    )
    if p.status == rniv.IdentityStatus.QUAL.value and before != p.status:
        release_waiting_documents(s, p.id)
    s.add(
        AuditEvent(
            actor=actor,
            action=kind,
            patient_id=p.id,
            reason="identitovigilance",
            detail={"status_before": before, "status_after": p.status},
        )
    )


def traits_query(p: Patient) -> InsiTraitsQuery:
    t = traits_of(p)
    return InsiTraitsQuery(
        birth_name=t.birth_name,
        first_names=t.first_names.split(" "),
        sex=t.sex.value,
        birth_date=t.birth_date.isoformat(),
        birth_place=t.birth_place,
    )


def identity_to_traits(identity: Any) -> StrictTraits:
    return StrictTraits.build(
        identity.birth_name,
        identity.first_names or identity.first_name,
        identity.birth_date,
        identity.sex,
        identity.birth_place,
    )


def _load_query(db: Database, patient_id: int) -> InsiTraitsQuery:
    with db.session() as s:
        return traits_query(s.get_one(Patient, patient_id))


async def search_insi(db: Database, insi: InsiPort, patient_id: int, actor: str) -> dict[str, Any]:
    """Call INSi now; on outage record it and hand the search to a retried job. Returns the INSi state."""
    try:
        query = await asyncio.to_thread(_load_query, db, patient_id)
    except IdentityError as exc:
        return await asyncio.to_thread(
            _record_state,
            db,
            patient_id,
            {"state": "invalid_traits", "message": exc.message, "at": utcnow().isoformat()},
        )
    try:
        result = await insi.search_by_traits(query)
    except InsiUnavailableError as exc:
        return await asyncio.to_thread(_record_outage, db, patient_id, str(exc), actor)
    return await asyncio.to_thread(record_result, db, patient_id, result, actor)


def _record_state(db: Database, patient_id: int, state: dict[str, Any]) -> dict[str, Any]:
    with db.session() as s:
        s.get_one(Patient, patient_id).insi_state = state
    return state


def _record_outage(db: Database, patient_id: int, error: str, actor: str) -> dict[str, Any]:
    with db.session() as s:
        p = s.get_one(Patient, patient_id)
        pending = pending_search(s, patient_id)
        job_id = (
            pending.id
            if pending is not None
            else jobs.enqueue(
                s,
                JobKind.INSI_SEARCH,
                f"{JobKind.INSI_SEARCH}:{patient_id}:{utcnow().isoformat()}",
                {"actor": actor},
                structure_id=p.structure_id,
                patient_id=patient_id,
            )
        )
        s.flush()
        state = {
            "state": "unavailable",
            "message": "Téléservice INSi injoignable : nouvel essai programmé",
            "error": error[:300],
            "job_id": job_id,
            "at": utcnow().isoformat(),
        }
        p.insi_state = state
        raise_alert(s, p, "insi_unavailable", "INSi injoignable : la recherche sera relancée automatiquement")
    return state


def pending_search(s: Session, patient_id: int) -> Job | None:
    return s.scalar(
        select(Job).where(
            Job.kind == JobKind.INSI_SEARCH,
            Job.patient_id == patient_id,
            Job.status.in_(("pending", "running")),
        )
    )


def record_result(db: Database, patient_id: int, result: InsiResult, actor: str) -> dict[str, Any]:
    """Store what INSi said and apply the RNIV consequence when the traits agree."""
    with db.session() as s:
        p = s.get_one(Patient, patient_id)
        local = traits_of(p)
        state: dict[str, Any] = {
            "state": "answered",
            "code": result.code,
            "label": result.label,
            "at": utcnow().isoformat(),
        }
        close_alerts(s, p.id, "insi_unavailable")
        if result.code == "00" and result.identity is not None:
            ident = result.identity
            ins = Ins.from_parts(ident.number13, ident.key or "", ident.oid)
            remote = identity_to_traits(ident)
            diffs = local.differences(remote)
            state.update(identity=asdict(ident), matricule=ins.matricule, oid=ins.oid, differences=diffs)
            if not diffs:
                p.ins_matricule, p.ins_oid = ins.matricule, ins.oid
                _transition(
                    s, p, rniv.after_insi_match(state_of(p)), "insi_match", actor, {"code": result.code}
                )
            else:
                raise_alert(
                    s, p, "trait_conflict", "Traits INSi différents des traits locaux : " + ", ".join(diffs)
                )
        elif result.code == "01":
            _transition(
                s, p, rniv.after_insi_no_match(state_of(p)), "insi_no_match", actor, {"code": result.code}
            )
        s.add(
            AuditEvent(
                actor=actor,
                action="insi_search",
                patient_id=p.id,
                reason="identitovigilance",
                detail={"code": result.code},
            )
        )
        p.insi_state = state
    return state


def accept_insi_traits(db: Database, patient_id: int, actor: str) -> None:
    """The vigilance officer confirms that INSi's traits are this person's: they replace the local ones."""
    with db.session() as s:
        p = s.get_one(Patient, patient_id)
        ident = (p.insi_state or {}).get("identity")
        if not ident or p.insi_state.get("code") != "00":
            raise IdentityError("RNIV_TRANSITION", "Aucune réponse INSi positive à reprendre", None)
        traits = StrictTraits.build(
            ident["birth_name"],
            ident["first_names"] or ident["first_name"],
            ident["birth_date"],
            ident["sex"],
            ident["birth_place"],
        )
        p.birth_name, p.first_names = traits.birth_name, traits.first_names
        p.birth_date, p.sex, p.birth_place = traits.birth_date, traits.sex.value, traits.birth_place
        p.ins_matricule, p.ins_oid = p.insi_state["matricule"], p.insi_state["oid"]
        p.insi_state = {**p.insi_state, "differences": []}
        _transition(s, p, rniv.after_insi_match(state_of(p)), "insi_traits_accepted", actor, {})
        close_alerts(s, p.id, "trait_conflict")


def record_document_check(db: Database, patient_id: int, document: str, actor: str) -> str:
    with db.session() as s:
        p = s.get_one(Patient, patient_id)
        _transition(
            s,
            p,
            rniv.after_document_check(state_of(p), document),
            "document_check",
            actor,
            {"document": document},
        )
        return p.status


def change_strict_traits(db: Database, patient_id: int, traits: StrictTraits, actor: str) -> str:
    """A hospital-side change of a strict trait: the identity drops back to provisional."""
    with db.session() as s:
        p = s.get_one(Patient, patient_id)
        if not traits_of(p).differences(traits):
            return p.status
        p.birth_name, p.first_names = traits.birth_name, traits.first_names
        p.birth_date, p.sex, p.birth_place = traits.birth_date, traits.sex.value, traits.birth_place
        _transition(s, p, rniv.after_strict_trait_change(state_of(p)), "strict_trait_change", actor, {})
        p.insi_state = {}
        return p.status


def merge(db: Database, target_id: int, source_id: int, actor: str) -> None:
    with db.session() as s:
        target, source = s.get_one(Patient, target_id), s.get_one(Patient, source_id)
        if target.structure_id != source.structure_id:
            raise IdentityError("MERGE", "Fusion impossible entre deux établissements différents", None)
        merge_into(s, target, [source], actor, reason="fusion manuelle")
        s.add(
            AuditEvent(
                actor=actor,
                action="merge",
                patient_id=target.id,
                reason="identitovigilance",
                detail={"source": source.id},
            )
        )


def make_insi_job_handler(db: Database, insi: InsiPort) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        if job.patient_id is None:
            raise PermanentError("job sans patient")
        state = await search_insi_for_job(db, insi, job.patient_id, job.args.get("actor", "worker"))
        return {"code": state.get("code")}

    return handle


async def search_insi_for_job(db: Database, insi: InsiPort, patient_id: int, actor: str) -> dict[str, Any]:
    """The retried form: an outage is the job's failure, so the worker's backoff applies."""
    query = await asyncio.to_thread(_load_query, db, patient_id)
    try:
        result = await insi.search_by_traits(query)
    except InsiUnavailableError as exc:
        raise RetryLater(str(exc)) from exc
    return await asyncio.to_thread(record_result, db, patient_id, result, actor)
