"""The patient's DMP, consulted from the patient's record (AIR simplifié): status, documents, document viewer.

The matrix decides who (``dmp.consult``, a strong session, the care relationship or a broken glass); the flow
decides whether the DMP may be called at all (qualified INS, consent, an RPPS). Each consultation and each
document opened is written in the audit trail; the DMP keeps its own access history.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from opensegur.content import jdv
from opensegur.content.cda import CdaError, parse_cda
from opensegur.content.narrative import EmbeddedFile, attachment, embedded_file, sections
from opensegur.flows.dmp_author_actions import AUTHOR_ACTIONS, act_as_author
from opensegur.flows.dmp_consult import (
    CONSENT_LABELS,
    ConsultationRefused,
    DmpAccess,
    DmpConsultPort,
)
from opensegur.flows.dmp_listing import KeptList, load_list, save_list
from opensegur.flows.dmp_search import AlteredDocument, DmpSearch, DmpView, open_dmp, open_document
from opensegur.flows.dmp_vaccinations import VaccinationRecord, vaccination_record
from opensegur.security import audit
from opensegur.security.matrix import Action
from opensegur.store.models import Document, Patient
from opensegur.transactions.xds import RetrievedDocument
from opensegur.web.deps import (
    Rt,
    WebRuntime,
    ensure_patient,
)
from opensegur.web.dmp_access import (
    DMP_ERRORS,
    ISO_DAY,
    Call,
    Consultant,
    Target,
    audit_dmp,
    consult,
    consultation,
    dmp_error,
)
from opensegur.web.documents import dtm_fr
from opensegur.web.flash import redirect_with_message
from opensegur.web.safety import DOCUMENT_CSP, attachment_headers
from opensegur.web.templating import render

router = APIRouter()

# A refusal for the patient's or the account's state (no consent, no qualified INS, no RPPS) is 409: 403 is the
# matrix's answer, for who the user is.
# A document from the DMP is the sender's content: shown in a sandboxed frame, never with our scripts or cookies.
_INERT = {
    "Content-Security-Policy": DOCUMENT_CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@router.get("/identites/{patient_id}/dmp", response_class=HTMLResponse, include_in_schema=False)
async def page_dmp(
    call: Call,
    patient_id: int,
    tout: bool = Query(False, description="toute la durée du DMP, au lieu des deux dernières années"),
    versions: bool = Query(False, description="montrer aussi les versions remplacées"),
    type: str = Query("", max_length=64, description="typeCode (JDV_J07) du document"),
    # Strings: an empty date field of the form arrives as "du=".
    du: str = Query("", pattern=ISO_DAY, description="date de l'acte, à partir du (AAAA-MM-JJ)"),
    au: str = Query("", pattern=ISO_DAY, description="date de l'acte, jusqu'au (AAAA-MM-JJ)"),
    auteur: str = Query("", max_length=100, description="auteur, établissement ou spécialité"),
    visibilite: str = Query(
        "", pattern="^(|normale|MASQUE_PS|INVISIBLE_PATIENT|INVISIBLE_REPRESENTANTS_LEGAUX)$"
    ),
    actualiser: bool = Query(False, description="rechercher à nouveau tout, au lieu des changements depuis"),
) -> Response:
    types = jdv.load_value_set(jdv.JDV_TYPE_CODE).codes
    if type and type not in types:
        raise HTTPException(422, f"Type de document « {type} » inconnu du jeu de valeurs JDV_J07")
    try:
        act_from, act_to = (date.fromisoformat(d) if d else None for d in (du, au))
    except ValueError as exc:
        raise HTTPException(422, f"Date de recherche invalide : {exc}") from exc
    if act_from and act_to and act_from > act_to:
        raise HTTPException(422, "La date de début de la recherche est après sa date de fin")
    search = DmpSearch(tout, versions, type or None, act_from, act_to, auteur.strip(), visibilite)
    ctx: dict[str, Any] = {
        "request": call.request,
        "patient_id": patient_id,
        "search": search,
        "types": types,
    }

    async def ask(target: Target, port: DmpConsultPort) -> DmpView:
        kept = None if actualiser else await asyncio.to_thread(_kept_list, call.rt, target)
        view = await open_dmp(
            port, target.consulter, target.cx, search=search, last_visit=target.last_visit, kept=kept
        )
        if view.to_keep is not None:
            same = view.refreshed is not None and not view.refreshed.changed
            await asyncio.to_thread(_keep_list, call.rt, target, view.to_keep, same)
        return view

    view = await consult(call, "patient_dmp.html", ctx, "consult_dmp", ask)
    if isinstance(view, Response):
        return view
    uids = [d.unique_id for d in view.documents]
    ctx["view"], ctx["local"] = view, await asyncio.to_thread(_local_copies, call.rt, patient_id, uids)
    return render(call.request, "patient_dmp.html", ctx)


def _kept_list(rt: WebRuntime, target: Target) -> KeptList | None:
    with rt.db.session() as s:
        return load_list(s, target.patient.id, target.consulter.rpps)


def _keep_list(rt: WebRuntime, target: Target, kept: KeptList, same_documents: bool) -> None:
    with rt.db.session() as s:
        save_list(s, target.patient.id, target.consulter.rpps, kept, same_documents=same_documents)


def _local_copies(rt: WebRuntime, patient_id: int, unique_ids: list[str]) -> dict[str, int]:
    """The DMP documents this patient's record already holds (same uniqueId, from the DPI or by MSSanté): shown
    once, opened from the local copy without an ITI-43."""
    if not unique_ids:
        return {}
    with rt.db.session() as s:
        rows = s.execute(
            select(Document.unique_id, Document.id).where(
                Document.patient_id == patient_id,
                Document.unique_id.in_(unique_ids),
                Document.kind != "deletion",
            )
        )
        return {uid: doc_id for uid, doc_id in rows}


@router.get("/identites/{patient_id}/dmp/document", include_in_schema=False)
async def page_dmp_document(
    call: Call,
    patient_id: int,
    uid: str = Query(min_length=1, max_length=128, description="uniqueId du document"),
    piece: str = Query(
        "", max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9._-]*$|^$", description="ID du fichier joint"
    ),
) -> Response:
    """A document of the patient's DMP: a level-1 PDF inert, a level-3 narrative as text; ``piece``, a file its
    narrative shows in place (renderMultiMedia: the PDF copy of a CR-BIO, an image)."""
    request = call.request
    ctx: dict[str, Any] = {"request": request, "patient_id": patient_id, "uid": uid}

    async def ask(target: Target, port: DmpConsultPort) -> RetrievedDocument:
        return await open_document(port, target.consulter, target.cx, uid)

    try:
        doc = await consult(call, "dmp_document.html", ctx, "open_dmp_document", ask)
    except AlteredDocument as exc:
        return render(request, "dmp_document.html", {**ctx, "error": str(exc)}, status_code=502)
    if isinstance(doc, Response):
        return doc
    if doc.mime_type == "application/pdf":
        return Response(doc.content, media_type="application/pdf", headers=_INERT)
    try:
        root, header = await asyncio.to_thread(parse_cda, doc.content)
        file = attachment(root, piece) if piece else embedded_file(root)
    except CdaError as exc:
        return render(
            request, "dmp_document.html", {**ctx, "error": f"Document illisible : {exc.message_fr}"}, 422
        )
    if piece:
        return _attached(request, ctx, file, piece)
    if file is not None and file.media_type == "application/pdf":
        return Response(file.content, media_type="application/pdf", headers=_INERT)
    return render(
        request, "dmp_document.html", {**ctx, "header": header, "sections": sections(root), "file": file}
    )


# What a joined file may be shown as, and how its first bytes must read: a file that says PDF and is not is refused.
_SHOWN_AS = {"application/pdf": b"%PDF-", "image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}


def _attached(request: Request, ctx: dict[str, Any], file: EmbeddedFile | None, piece: str) -> Response:
    if file is None:
        return render(
            request,
            "dmp_document.html",
            {**ctx, "error": f"Ce document ne joint aucun fichier « {piece} »"},
            404,
        )
    magic = _SHOWN_AS.get(file.media_type)
    if magic is None or not file.content.startswith(magic):
        why = f"Fichier joint non affiché : son contenu n'est pas un fichier {file.media_type} que la page montre"
        return render(request, "dmp_document.html", {**ctx, "error": why}, 415)
    return Response(file.content, media_type=file.media_type, headers=_INERT)


@router.post("/identites/{patient_id}/dmp/document/action", include_in_schema=False)
async def page_dmp_author_action(
    call: Call,
    patient_id: int,
    uid: str = Form(min_length=1, max_length=128),
    action: str = Form(pattern="^(" + "|".join(AUTHOR_ACTIONS) + ")$"),
) -> Response:
    """The author of a document masks it, changes its visibility or deletes it (ITI-57); back to the list with
    what the DMP said. Audited with the document and the action, refused or not."""
    ctx: dict[str, Any] = {"request": call.request, "patient_id": patient_id}
    ready = await consultation(call, "patient_dmp.html", ctx, "consult_dmp_author_action")
    if isinstance(ready, Response):
        return ready
    target, port = ready
    detail = {"action": action, "document": uid}
    try:
        done = await act_as_author(port, target.consulter, target.cx, uid, action)
        message = f"{done.done} ({uid})."
    except ConsultationRefused as exc:
        message = detail["refus"] = exc.reason
    except DMP_ERRORS as exc:
        message = detail["refus"] = dmp_error(exc)
    await asyncio.to_thread(audit_dmp, call.rt, call.actor, patient_id, "dmp_author_action", detail)
    return redirect_with_message(f"/identites/{patient_id}/dmp", message, call.actor)


@router.get("/identites/{patient_id}/dmp/acces", response_class=HTMLResponse, include_in_schema=False)
async def page_dmp_access_history(call: Call, patient_id: int) -> Response:
    """The DMP's access history of the patient: who consulted or fed it, when, in which mode."""
    ctx: dict[str, Any] = {"request": call.request, "patient_id": patient_id}
    page = "patient_dmp_access.html"

    async def ask(target: Target, port: DmpConsultPort) -> list[DmpAccess] | None:
        return await port.access_history(target.consulter, target.cx)

    accesses = await consult(call, page, ctx, "consult_dmp_access_history", ask)
    if isinstance(accesses, Response):
        return accesses
    return render(call.request, page, {**ctx, "accesses": accesses})


@router.post("/identites/{patient_id}/consentement-dmp", include_in_schema=False)
async def page_dmp_consent(
    request: Request,
    patient_id: int,
    actor: Consultant,
    rt: Rt,
    consentement: str = Form(pattern="^(IC|INC)$"),
) -> RedirectResponse:
    """The patient, informed, consents to the consultation of their DMP (IC) or refuses it (INC): recorded as
    PAM FR ZFA-11 would bring it, with the date, and in the audit trail with the value it replaces."""

    def _do() -> None:
        with rt.db.session() as s:
            p = s.get(Patient, patient_id)
            if p is None:
                raise HTTPException(404, "Patient inconnu")
            ensure_patient(s, rt, actor, Action.DMP_CONSULT, p.id, request.url.path)
            before = (p.dmp_consent or {}).get("consultation_consent") or "NA"
            p.dmp_consent = {
                **(p.dmp_consent or {}),
                "consultation_consent": consentement,
                "consultation_consent_date": datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
            }
            audit.record(s, actor, "dmp_consent", p.id, "dmp", {"avant": before, "apres": consentement})

    await asyncio.to_thread(_do)
    return redirect_with_message(f"/identites/{patient_id}/dmp", CONSENT_LABELS[consentement], actor)


@router.get("/identites/{patient_id}/dmp/vaccinations", include_in_schema=False)
async def page_dmp_vaccinations(
    call: Call,
    patient_id: int,
    format: str = Query("html", pattern="^(html|csv)$", description="csv : le carnet à télécharger"),
) -> Response:
    """The carnet de vaccination, from the patient's vaccination documents in the DMP; CSV to download."""
    ctx: dict[str, Any] = {"request": call.request, "patient_id": patient_id}
    page = "patient_vaccinations.html"

    async def ask(target: Target, port: DmpConsultPort) -> VaccinationRecord:
        return await vaccination_record(port, target.consulter, target.cx)

    record = await consult(call, page, ctx, "consult_dmp_vaccinations", ask)
    if isinstance(record, Response):
        return record
    if format == "csv":
        headers = attachment_headers(f"carnet-vaccination-{patient_id}.csv", "text/csv; charset=utf-8")
        return Response(_vaccinations_csv(record), headers={**headers, "Cache-Control": "no-store"})
    return render(call.request, page, {**ctx, "record": record})


def _vaccinations_csv(record: VaccinationRecord) -> bytes:
    out = io.StringIO()
    # Semicolons and a BOM: what a French spreadsheet opens without an import dialog.
    writer = csv.writer(out, delimiter=";")
    writer.writerow(["Date", "Vaccin", "Protège contre", "Rang", "Lot", "Vaccinateur", "Statut", "Réactions"])
    for v in record.vaccinations:
        writer.writerow(
            [
                dtm_fr(v.date[:8]),
                v.vaccine,
                v.protects_against,
                v.rank,
                v.lot,
                v.vaccinator,
                "Administré" if v.given else "Non administré",
                " ; ".join(v.reactions),
            ]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")
