"""HTTP edge of the FHIR MHD intake (ITI-65) under ``/fhir``: the Provide Document Bundle, the DocumentReference
read-back and the CapabilityStatement. JSON only; every refusal is an OperationOutcome in French.

The Bundle is read in a bounded stream, then parsed and stored in one transaction (``flows.mhd_intake``): all or
nothing, and the workers are woken once it is committed.
"""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from opensegur.errors import OpenSegurError
from opensegur.flows.mhd_intake import accept_bundle, read_document_reference
from opensegur.flows.rest_intake import DEFAULT_MAX_PDF_BYTES
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import Document
from opensegur.transactions.mhd import (
    FHIR_JSON,
    FhirError,
    capability_statement,
    operation_outcome,
    parse_provide_bundle,
    size_label,
    transaction_response,
)
from opensegur.web.deps import Rt, allow, ensure_document, public

FHIR_BASE = "/fhir"
# Resource JSON around the documents: Bundle, List, DocumentReference and author resources.
_ENVELOPE_ALLOWANCE = 512 * 1024
_JSON_TYPES = ("application/fhir+json", "application/json")
_CAPABILITY_DATE = "2026-11-26"


class _TooLarge(OpenSegurError):
    pass


def _outcome(error: FhirError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        operation_outcome(error), status_code=error.status, media_type=FHIR_JSON, headers=headers
    )


async def _read_bounded(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


router = APIRouter(prefix=FHIR_BASE, tags=["fhir"])
Sender = Annotated[Actor, Depends(allow(Action.DOCUMENTS_SEND))]
Reader = Annotated[Actor, Depends(allow(Action.DOCUMENTS_READ))]


@router.get("/metadata", summary="CapabilityStatement du serveur FHIR (MHD Document Recipient)")
async def metadata(
    _: Annotated[None, Depends(public("CapabilityStatement FHIR, publique par la norme"))],
) -> JSONResponse:
    try:
        software = version("opensegur")
    except PackageNotFoundError:
        software = "0"
    return JSONResponse(capability_statement(date=_CAPABILITY_DATE, version=software), media_type=FHIR_JSON)


@router.post("", summary="ITI-65 Provide Document Bundle : PDF ou CDA vers le DMP")
async def provide(request: Request, actor: Sender, rt: Rt) -> JSONResponse:
    doc_limit = int(getattr(rt.settings, "rest_max_upload_bytes", None) or DEFAULT_MAX_PDF_BYTES)
    # base64 turns 3 bytes into 4: the body may be that much larger than the document it carries.
    body_limit = -(-doc_limit // 3) * 4 + _ENVELOPE_ALLOWANCE
    too_large = FhirError(
        413, "too-costly", f"Bundle trop volumineux : document de {size_label(doc_limit)} au plus", "Bundle"
    )
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _JSON_TYPES:
        return _outcome(
            FhirError(
                415,
                "not-supported",
                f"Format « {media or 'absent'} » non proposé : Bundle en application/fhir+json attendu "
                "(XML non pris en charge)",
            )
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        return _outcome(too_large)
    try:
        raw = await _read_bounded(request, body_limit)
    except _TooLarge:
        return _outcome(too_large)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return _outcome(FhirError(400, "structure", f"Corps JSON illisible ({exc})"))

    def _store() -> Any:
        bundle = parse_provide_bundle(data, max_document_bytes=doc_limit)
        with rt.db.session() as s:
            return accept_bundle(s, bundle, oid_root=rt.settings.oid_root, actor=actor.name)

    try:
        outcome = await asyncio.to_thread(_store)
    except FhirError as exc:
        return _outcome(exc)
    except IntegrityError:
        # Two identical Bundles at the same instant: the loser's retry will find the winner's documents.
        return _outcome(
            FhirError(409, "conflict", "Soumission concurrente du même document : renvoyez le Bundle")
        )
    return JSONResponse(transaction_response(outcome.results), media_type=FHIR_JSON)


@router.get("/DocumentReference/{resource_id}", summary="Fiche d'un document et son statut")
async def document_reference(resource_id: str, actor: Reader, rt: Rt) -> JSONResponse:

    def _read() -> dict[str, Any] | None:
        if not resource_id.isdigit():
            return None
        with rt.db.session() as s:
            doc = s.get(Document, int(resource_id))
            if doc is None:
                return None
            ensure_document(s, rt, actor, Action.DOCUMENTS_READ, doc)
            return read_document_reference(s, doc.id, actor.name)

    found = await asyncio.to_thread(_read)
    if found is None:
        return _outcome(
            FhirError(404, "not-found", f"DocumentReference/{resource_id} inconnue", "DocumentReference")
        )
    return JSONResponse(found, media_type=FHIR_JSON)
