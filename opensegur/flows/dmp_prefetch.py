"""Flow: on admission, the patient's DMP list is prepared for the doctor responsible for the stay, so that it is
there when they open the patient (AIR simplifié's « accès rapide »).

An admission (A01, A04, A05) whose PV1-7 names the responsible doctor by RPPS (idNat_PS ``8…`` or RPPS) queues a
job, in the transaction that records the movement. The job runs as that doctor: an active account of the
platform with that RPPS, whose roles grant ``dmp.consult`` on this patient (the care relationship the movement
has just recorded), on a patient with a qualified INS and the consent to consultation. It calls TD0.2 and the
first search, and keeps the list (``dmp_listing``) for the doctor's first opening, which then asks the DMP only
what changed since. Nothing is prefetched for anyone else: what the DMP shows depends on who asks.

The VIHF carries the doctor's identity (INDIRECTE_RENFORCEE) while they are not logged in, so the DMP's access
history shows a consultation in their name at the time of the admission; the audit trail records it as the
platform's (``prefetch_dmp``, naming the doctor). A site that does not want it sets ``dmp_prefetch = false``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.errors import RetryLater
from opensegur.flows.dmp_consult import (
    ConsultationRefused,
    Consulter,
    DmpConsultPort,
    SpecialtyLookup,
    consent_refusal,
    consulter_for,
    patient_cx,
    with_specialty,
)
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError
from opensegur.flows.dmp_listing import ORIGIN_ADMISSION, KeptList, save_list
from opensegur.flows.dmp_search import open_dmp
from opensegur.flows.jobs import JobKind
from opensegur.flows.stays import ADMISSIONS
from opensegur.flows.worker import Handler
from opensegur.security import access, audit
from opensegur.security.accounts import actor_for_account
from opensegur.security.matrix import Action, Matrix
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import Account, Job, Patient, Structure
from opensegur.transactions.pam_fr import PamEvent

__all__ = ["make_prefetch_handler", "request_prefetch"]

AUDIT_ACTOR = "prefetch"  # the audit trail's actor: the platform, on the doctor's behalf


def request_prefetch(session: Session, event: PamEvent, patient: Patient, site: Structure) -> int | None:
    """Queue the prefetch for an admission that names its responsible doctor by RPPS, on a patient whose DMP
    may be consulted; the job's id, or None. Called inside the transaction that stores the movement."""
    if event.trigger not in ADMISSIONS or event.movement_action == "CANCEL" or event.attending_rpps is None:
        return None
    if not (site.settings or {}).get("dmp_prefetch", True) or consent_refusal(patient) is not None:
        return None
    rpps = event.attending_rpps
    return jobs.enqueue(
        session,
        JobKind.DMP_PREFETCH,
        # One per message: a message sent again is one job; a new admission message, a new list.
        f"{JobKind.DMP_PREFETCH}:{patient.id}:{site.id}:{event.header.control_id}",
        {"patient_id": patient.id, "rpps": rpps},
        structure_id=site.id,
        patient_id=patient.id,
        max_attempts=3,  # past a few tries the doctor's own opening searches anyway
        lane=jobs.Lane.PROMPT,
    )


@dataclass(frozen=True)
class _Prepared:
    patient_id: int
    login: str
    consulter: Consulter
    cx: str


def _prepare(db: Database, matrix: Matrix, args: dict[str, Any]) -> _Prepared | str:
    """The doctor and the patient of the job, or why nothing is prefetched (audited when it is the patient's
    state or the doctor's rights, not when no account matches: a doctor from outside is no one's business here)."""
    with db.session() as s:
        patient = s.get(Patient, int(args["patient_id"]))
        if patient is None or patient.merged_into_id is not None or not patient.active:
            return "patient inconnu, fusionné ou inactif"
        accounts = s.scalars(
            select(Account).where(Account.rpps == str(args["rpps"]), Account.active).order_by(Account.id)
        ).all()
        if not accounts:
            return "aucun compte actif pour ce RPPS"
        for account in accounts:
            actor = actor_for_account(account, None)
            if access.patient_allowed(s, matrix.scopes(actor.assignments, Action.DMP_CONSULT), patient.id):
                break
        else:
            return "le médecin responsable n'a pas accès à ce patient"
        detail = {"pour": account.login}
        try:
            consulter = consulter_for(actor.roles, actor.rpps, actor.display_name, patient, "normal")
        except ConsultationRefused as exc:
            audit.record(
                s,
                None,
                "prefetch_dmp",
                patient.id,
                "dmp",
                {**detail, "refus": exc.reason},
                actor_name=AUDIT_ACTOR,
            )
            return exc.reason
        audit.record(s, None, "prefetch_dmp", patient.id, "dmp", detail, actor_name=AUDIT_ACTOR)
        assert patient.ins_matricule and patient.ins_oid
        return _Prepared(
            patient.id, account.login, consulter, patient_cx(patient.ins_matricule, patient.ins_oid)
        )


def _keep(db: Database, prepared: _Prepared, kept: KeptList) -> None:
    with db.session() as s:
        save_list(s, prepared.patient_id, prepared.consulter.rpps, replace(kept, origin=ORIGIN_ADMISSION))


def make_prefetch_handler(
    db: Database, port: DmpConsultPort | None, specialty: SpecialtyLookup, matrix: Callable[[], Matrix]
) -> Handler:
    """``matrix`` is read at each job: the configuration directory may have been reloaded since the start."""

    async def handle(job: Job) -> dict[str, Any]:
        if port is None:
            return {"skipped": "aucun DMP configuré"}
        prepared = await asyncio.to_thread(_prepare, db, matrix(), job.args)
        if isinstance(prepared, str):
            return {"skipped": prepared}
        try:
            consulter = await with_specialty(prepared.consulter, specialty)
            view = await open_dmp(port, consulter, prepared.cx)
        except ConsultationRefused as exc:
            return {"skipped": exc.reason}
        except DmpUnavailableError as exc:
            raise RetryLater(f"DMP injoignable : {exc}") from exc
        except DmpRejectedError as exc:  # the doctor's own opening will show the DMP's answer
            return {"skipped": f"refus du DMP ({exc.code})"}
        if view.to_keep is None:
            return {"status": view.status.status, "authorisation": view.status.authorisation}
        await asyncio.to_thread(_keep, db, prepared, view.to_keep)
        return {"documents": len(view.to_keep.documents), "pour": prepared.login}

    return handle
