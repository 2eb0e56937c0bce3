"""WADO-RS for the DRIMboxes of other hospitals: a series of an exam this DRIMbox published, streamed from the
PACS — from its own WADO-RS when it has one (passed through), else by C-GET. Who may ask is the flow's rule
(``flows.drimbox_serving``): an active Pro Santé Connect token and a published manifest that covers the series;
errors are JSON, in French, as for the API."""

from __future__ import annotations

import asyncio
import itertools
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path
from fastapi.responses import Response, StreamingResponse

from opensegur.flows.drimbox_ports import IntrospectionUnavailable, PacsError
from opensegur.flows.drimbox_serving import CallerRefused, ServedSeries, covering_manifest, listed_caller
from opensegur.imaging.uids import UID_MAX, UID_PATTERN
from opensegur.imaging.wado import NotAcceptable, accepted_transfer_syntaxes, multipart_dicom
from opensegur.security import audit
from opensegur.web.deps import ClientCertificate, Drimbox, Rt, WebRuntime, public

router = APIRouter(tags=["DRIMbox"])

Peer = Annotated[
    None,
    Depends(
        public(
            "WADO-RS entre DRIMbox : certificat de la liste blanche (TLS mutuel), jeton Pro Santé Connect "
            "introspecté et manifeste publié, vérifiés ici"
        )
    ),
]
_BEARER = {"WWW-Authenticate": 'Bearer realm="drimbox"'}


def _covering(rt: WebRuntime, kos: str, study: str, series: str) -> ServedSeries | None:
    with rt.db.session() as s:
        return covering_manifest(s, kos, study, series)


def _audit(
    rt: WebRuntime, sub: str, caller: str | None, served: ServedSeries, study: str, series: str
) -> None:
    detail = {"manifeste": served.manifest_sop, "examen": study, "serie": series}
    if caller is not None:
        detail["drimbox"] = caller
    with rt.db.session() as s:
        audit.record(
            s,
            None,
            "drimbox_retrieve",
            served.patient_id,
            "drimbox",
            detail,
            actor_name=f"psc:{sub}"[:100],
        )


@router.get("/dicom-web/studies/{study}/series/{series}", summary="Série d'un examen publié (WADO-RS)")
async def retrieve_series(
    _: Peer,
    rt: Rt,
    drimbox: Drimbox,
    certificate: ClientCertificate,
    study: Annotated[str, Path(pattern=UID_PATTERN, max_length=UID_MAX)],
    series: Annotated[str, Path(pattern=UID_PATTERN, max_length=UID_MAX)],
    kos: Annotated[str, Header(alias="KOS-SOPInstanceUID", max_length=64)] = "",
    accept: Annotated[str | None, Header(max_length=4000)] = None,
    authorization: Annotated[str, Header(max_length=8000)] = "",
) -> Response:
    if drimbox is None:
        raise HTTPException(404, "Cette plateforme ne sert pas d'images (aucun PACS configuré)")
    try:
        caller = await asyncio.to_thread(listed_caller, drimbox, certificate)
    except CallerRefused as exc:
        raise HTTPException(403, str(exc)) from exc
    scheme, _sep, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "Jeton Pro Santé Connect requis (Authorization: Bearer)", headers=_BEARER)
    try:
        sub = await drimbox.introspector.subject(token.strip())
    except IntrospectionUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    if sub is None:
        raise HTTPException(401, "Jeton Pro Santé Connect inactif ou expiré", headers=_BEARER)
    try:
        syntaxes = accepted_transfer_syntaxes(accept)
    except NotAcceptable as exc:
        raise HTTPException(406, str(exc)) from exc
    served = await asyncio.to_thread(_covering, rt, kos, study, series)
    if served is None:
        # Same answer for an unknown manifest, another exam's or an uncovered series: nothing to learn here.
        raise HTTPException(
            404, "Série inconnue de ce DRIMbox ou non couverte par le manifeste KOS-SOPInstanceUID"
        )
    if drimbox.pacs_wado is not None:
        try:
            opened = await drimbox.pacs_wado.open_series(study, series, syntaxes)
        except PacsError as exc:
            raise HTTPException(503, f"PACS indisponible, réessayez plus tard : {exc}") from exc
        if opened is None:
            raise HTTPException(404, "Les images de cette série ne sont plus dans le PACS")
        await asyncio.to_thread(_audit, rt, sub, caller, served, study, series)
        # The PACS's own multipart answer, passed through as it streams in.
        return StreamingResponse(
            opened.body(), media_type=opened.content_type, headers={"Cache-Control": "no-store"}
        )
    instances = drimbox.pacs.retrieve_series(study, series, syntaxes)
    try:
        first = await asyncio.to_thread(next, instances, None)
    except PacsError as exc:
        raise HTTPException(503, f"PACS indisponible, réessayez plus tard : {exc}") from exc
    if first is None:
        raise HTTPException(404, "Les images de cette série ne sont plus dans le PACS")
    await asyncio.to_thread(_audit, rt, sub, caller, served, study, series)
    content_type, body = multipart_dicom(
        (i.data, i.transfer_syntax) for i in itertools.chain([first], instances)
    )
    # A sync iterator: Starlette reads it in its thread pool, one instance at a time.
    return StreamingResponse(body, media_type=content_type, headers={"Cache-Control": "no-store"})
