"""The DMP's imaging tab: the exams other hospitals published in the patient's DMP (KOS manifests), searched by
modality, region, dates or accession number, and their images brought into this site by the DRIMbox consumer.

A retrieval asks the source DRIMbox in the professional's name, with the Pro Santé Connect token of their
session: a professional logged in otherwise is asked to log in through PSC first. The page shows each
retrieval's progress and reloads itself while one is under way."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from opensegur.content.cda import CdaError
from opensegur.content.jdv import load_value_set
from opensegur.flows.dmp_consult import DmpConsultPort
from opensegur.flows.dmp_search import AlteredDocument, open_document
from opensegur.flows.drimbox_cache import FetchStatus, FetchView
from opensegur.flows.drimbox_consumer import (
    DrimboxConsumer,
    Exam,
    FetchRefused,
    ImagingSearch,
    PatientRef,
    find_exams,
)
from opensegur.flows.drimbox_import import request_import
from opensegur.imaging.report import ImagingReportError, read_imaging_report
from opensegur.imaging.uids import UID_MAX, UID_PATTERN, is_uid
from opensegur.imaging.xdsi import JDV_MODALITIES, JDV_REGIONS, KOS_TYPE
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.security.psc_delegation import PscDelegation
from opensegur.store.models import Patient
from opensegur.transactions.xds import RetrievedDocument
from opensegur.web.deps import Consumer, Delegation, WebRuntime, ensure_patient
from opensegur.web.dmp_access import (
    DMP_ERRORS,
    ISO_DAY,
    Call,
    Target,
    audit_dmp,
    consult,
    consultation,
    dmp_error,
)
from opensegur.web.flash import redirect_with_message
from opensegur.web.templating import render

router = APIRouter()

PAGE = "patient_dmp_imaging.html"
_CODE = r"^[A-Za-z0-9._-]{0,32}$"


def _tab(patient_id: int) -> str:
    return f"/identites/{patient_id}/dmp/imagerie"


def _context(
    call: Call,
    patient_id: int,
    search: ImagingSearch,
    consumer: DrimboxConsumer | None,
    delegation: PscDelegation | None,
) -> dict[str, Any]:
    return {
        "request": call.request,
        "patient_id": patient_id,
        "search": search,
        "modalities": load_value_set(JDV_MODALITIES).codes,
        "regions": load_value_set(JDV_REGIONS).codes,
        "consumer": consumer is not None,
        "psc_token": delegation is not None and delegation.token(call.actor.session_id) is not None,
        "pacs": bool(call.rt.settings.pacs_host),
    }


@router.get("/identites/{patient_id}/dmp/imagerie", response_class=HTMLResponse, include_in_schema=False)
async def page_dmp_imaging(
    call: Call,
    consumer: Consumer,
    delegation: Delegation,
    patient_id: int,
    modalite: str = Query(
        "", pattern=_CODE, description="modalité d'acquisition (JDV_ModaliteAcquisition_CISIS)"
    ),
    region: str = Query("", pattern=_CODE, description="région anatomique (JDV_RegionAnatomique_CISIS)"),
    du: str = Query("", pattern=ISO_DAY, description="date de l'examen, à partir du (AAAA-MM-JJ)"),
    au: str = Query("", pattern=ISO_DAY, description="date de l'examen, jusqu'au (AAAA-MM-JJ)"),
    accession: str = Query("", max_length=64, description="numéro d'accession de l'examen"),
    etude: str = Query(
        "", max_length=UID_MAX, description="l'examen (Study Instance UID) dont un compte rendu envoie ici"
    ),
) -> Response:
    modalities, regions = load_value_set(JDV_MODALITIES).codes, load_value_set(JDV_REGIONS).codes
    if modalite and modalite not in modalities:
        raise HTTPException(
            422, f"Modalité « {modalite} » inconnue du jeu de valeurs des modalités d'acquisition"
        )
    if region and region not in regions:
        raise HTTPException(422, f"Région « {region} » inconnue du jeu de valeurs des régions anatomiques")
    act_from, act_to = (date.fromisoformat(d) if d else None for d in (du, au))
    if act_from and act_to and act_from > act_to:
        raise HTTPException(422, "La date de début de la recherche est après sa date de fin")
    if etude and not is_uid(etude):
        raise HTTPException(422, "Identifiant d'examen (Study Instance UID) invalide")
    search = ImagingSearch(modalite, region, act_from, act_to, accession.strip(), etude)
    ctx = _context(call, patient_id, search, consumer, delegation)

    async def ask(target: Target, port: DmpConsultPort) -> list[Exam]:
        return await find_exams(port, target.consulter, target.cx, search)

    try:
        exams = await consult(call, PAGE, ctx, "consult_dmp_imaging", ask)
    except FetchRefused as exc:
        return render(call.request, PAGE, {**ctx, "error": str(exc)}, status_code=422)
    if isinstance(exams, Response):
        return exams
    fetches: dict[str, FetchView] = {}
    if consumer is not None:
        fetches = await asyncio.to_thread(consumer.cache.for_patient, patient_id)
    under_way = any(f.status == FetchStatus.FETCHING for f in fetches.values())
    return render(call.request, PAGE, {**ctx, "exams": exams, "fetches": fetches, "under_way": under_way})


@router.get("/identites/{patient_id}/dmp/imagerie/examen", include_in_schema=False)
async def page_dmp_report_images(
    call: Call,
    consumer: Consumer,
    delegation: Delegation,
    patient_id: int,
    compte_rendu: str = Query(
        min_length=1, max_length=128, description="uniqueId du compte rendu d'imagerie"
    ),
) -> Response:
    """From an imaging report of the DMP to its exam's images: the report is read (ITI-43) for the exam it
    documents — its accession number, else its Study Instance UID —, then the imaging tab shows that exam, to
    retrieve or open in one more click."""
    ctx = _context(call, patient_id, ImagingSearch(), consumer, delegation)

    async def ask(target: Target, port: DmpConsultPort) -> RetrievedDocument:
        return await open_document(port, target.consulter, target.cx, compte_rendu)

    try:
        doc = await consult(call, PAGE, ctx, "open_dmp_document", ask)
    except AlteredDocument as exc:
        return render(call.request, PAGE, {**ctx, "error": str(exc)}, status_code=502)
    if isinstance(doc, Response):
        return doc
    if "xml" not in doc.mime_type:
        why = f"ce document ({doc.mime_type}) n'est pas un compte rendu d'imagerie CDA"
        return render(
            call.request, PAGE, {**ctx, "error": f"Examen introuvable depuis ce compte rendu : {why}"}, 422
        )
    try:
        report = await asyncio.to_thread(read_imaging_report, doc.content)
    except (CdaError, ImagingReportError) as exc:
        why = exc.message_fr if isinstance(exc, CdaError) else str(exc)
        return render(
            call.request, PAGE, {**ctx, "error": f"Examen introuvable depuis ce compte rendu : {why}"}, 422
        )
    # The accession number first, as DRIM-M links a report to its manifest (referenceIdList); else the study.
    accession = report.accession.extension if report.accession and report.accession.extension else ""
    query = urlencode({"accession": accession} if accession else {"etude": report.study_instance_uid})
    return RedirectResponse(f"{_tab(patient_id)}?{query}", status_code=303)


@router.post("/identites/{patient_id}/dmp/imagerie/recuperer", include_in_schema=False)
async def page_dmp_imaging_fetch(
    call: Call,
    consumer: Consumer,
    delegation: Delegation,
    patient_id: int,
    kos: str = Form(pattern=UID_PATTERN, max_length=UID_MAX),
) -> Response:
    """Starts bringing an exam's images from the DRIMbox that published it, in the professional's name."""
    back = _tab(patient_id)
    token = delegation.token(call.actor.session_id) if delegation is not None else None
    if token is None:
        retour = quote(back, safe="/")
        return redirect_with_message(
            f"/connexion/psc?retour={retour}",
            "Connectez-vous avec Pro Santé Connect : le DRIMbox de l'établissement qui a fait l'examen demande "
            "votre identité Pro Santé Connect pour envoyer les images.",
            call.actor,
        )
    if consumer is None:
        raise HTTPException(
            503, "Aucun DMP n'est configuré : pas de récupération d'images d'autres établissements"
        )
    ctx: dict[str, Any] = {"request": call.request, "patient_id": patient_id}
    ready = await consultation(call, PAGE, ctx, "consult_dmp_imaging")
    if isinstance(ready, Response):
        return ready
    target, port = ready
    detail = {"manifeste": kos}
    try:
        entry = await port.get_document(target.consulter, target.cx, kos)
        if entry is None or entry.type_code.code != KOS_TYPE.code:
            raise FetchRefused("Ce manifeste d'imagerie n'est pas (ou plus) dans le DMP du patient")
        assert target.patient.ins_matricule is not None  # consultation() requires a qualified INS
        patient = PatientRef(target.patient.id, target.patient.ins_matricule, target.cx)
        view = await consumer.start(target.consulter, patient, entry, token, call.actor.name)
        message = (
            "Images déjà disponibles sur ce site."
            if view.status == FetchStatus.COMPLETE
            else "Récupération des images lancée : la page suit son avancement."
        )
    except FetchRefused as exc:
        message = detail["refus"] = str(exc)
    except DMP_ERRORS as exc:
        message = detail["refus"] = dmp_error(exc)
    await asyncio.to_thread(audit_dmp, call.rt, call.actor, patient_id, "fetch_dmp_imaging", detail)
    return redirect_with_message(back, message, call.actor)


def _queue_import(
    rt: WebRuntime, actor: Actor, consumer: DrimboxConsumer, patient_id: int, kos: str, path: str
) -> str:
    """The import job of the patient's complete exam ``kos``, in the transaction of its audit entry; what to say."""
    exams = consumer.cache.for_patient(patient_id)
    fetch = exams.get(kos)
    if fetch is None or fetch.status != FetchStatus.COMPLETE:
        raise HTTPException(404, "Examen absent du cache d'images de ce patient : récupérez-le d'abord")
    with rt.db.session() as s:
        ensure_patient(s, rt, actor, Action.DMP_CONSULT, patient_id, path)
        patient = s.get_one(Patient, patient_id)
        request_import(s, fetch, patient.structure_id)
        audit.record(s, actor, "import_dmp_imaging", patient_id, "imagerie", {"manifeste": kos})
    return "Import dans le PACS du site demandé : les images y seront dans quelques instants."


@router.post("/identites/{patient_id}/dmp/imagerie/importer", include_in_schema=False)
async def page_dmp_imaging_import(
    call: Call,
    consumer: Consumer,
    patient_id: int,
    kos: str = Form(pattern=UID_PATTERN, max_length=UID_MAX),
) -> Response:
    """Imports a retrieved exam into this site's PACS (C-STORE, a durable job)."""
    if consumer is None or not call.rt.settings.pacs_host:
        raise HTTPException(409, "Aucun PACS n'est configuré sur ce site (pacs_host) : import impossible")
    message = await asyncio.to_thread(
        _queue_import, call.rt, call.actor, consumer, patient_id, kos, call.request.url.path
    )
    return redirect_with_message(_tab(patient_id), message, call.actor)
