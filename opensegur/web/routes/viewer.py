"""The zero-install image viewer: OHIF's prebuilt viewer (npm ``@ohif/app``, installed by ``make install`` beside
the Python environment, see ``ops.viewer_install``) served by the platform, on the exams of other hospitals this
site's DRIMbox consumer brought into its image cache.

- ``/visionneuse/…``: the viewer's page, for a professional who may consult DMPs; ``/app-config.js``: its
  configuration, written here — one DICOMweb source, this platform's ``/visionneuse/dicom-web``, no study list, no
  other source a URL could add.
- The viewer's code (its chunks, workers and codecs) is built to load from the site's root: the files of its dist
  are answered there, after every other route. Its service worker is not installed (``init-service-worker.js`` is
  empty): it would take the platform's own pages under its scope.
- ``/visionneuse/dicom-web``: QIDO-RS and WADO-RS (metadata, frames) read from the cache, for the exams of a
  patient the professional may see (the DMP's rule: ``dmp.consult`` in the care relationship, or a broken glass);
  the study's opening is written in the audit trail.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from opensegur.flows.drimbox_cache import FetchView, ImageCache
from opensegur.flows.drimbox_consumer import DrimboxConsumer
from opensegur.imaging.dicom_json import FrameError, frame, instance_metadata, series_json, study_json
from opensegur.imaging.uids import UID_MAX, UID_PATTERN
from opensegur.imaging.wado import multipart_parts
from opensegur.ops.viewer_install import viewer_dir
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.web.deps import Consumer, Rt, WebRuntime, allow, ensure_patient, public

router = APIRouter(include_in_schema=False)
# The viewer's files at the site's root: included after every other router.
root_files = APIRouter(include_in_schema=False)

Viewer = Annotated[Actor, Depends(allow(Action.DMP_CONSULT))]
Code = Annotated[None, Depends(public("code de la visionneuse OHIF, sans donnée de patient"))]
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=UID_MAX)]

# OHIF runs its codecs as WebAssembly in workers and sets styles from script; the page is still kept to this origin.
VIEWER_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self' blob: data:; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": VIEWER_CSP, "Cache-Control": "no-store"}
BASENAME = "/visionneuse"


def _dist(rt: WebRuntime) -> FsPath:
    configured = getattr(rt.settings, "viewer_dir", None)
    return FsPath(configured) if configured else viewer_dir()


def _config() -> str:
    root = f"{BASENAME}/dicom-web"
    config: dict[str, Any] = {
        "routerBasename": BASENAME,
        "showStudyList": False,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "maxNumberOfWebWorkers": 2,
        "maxNumRequests": {"interaction": 50, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "opensegur",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "opensegur",
                "configuration": {
                    "friendlyName": "Images récupérées par le DRIMbox",
                    "name": "opensegur",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": False,
                    "staticWado": False,
                    "singlepart": False,
                    "bulkDataURI": {"enabled": False},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, ensure_ascii=False)};\n"


@router.get("/app-config.js")
async def viewer_config(_: Code) -> Response:
    return Response(_config(), media_type="text/javascript", headers=_HEADERS)


@router.get("/init-service-worker.js")
async def no_service_worker(_: Code) -> Response:
    return Response("// pas de service worker : il prendrait aussi les pages de la plateforme\n",
                    media_type="text/javascript", headers=_HEADERS)  # fmt: skip


@root_files.get("/{name:path}")
async def viewer_asset(_: Code, rt: Rt, name: str) -> Response:
    dist = _dist(rt).resolve()
    target = (dist / name).resolve()
    if not name or not target.is_relative_to(dist) or not target.is_file() or target.name == "index.html":
        raise HTTPException(404, "Introuvable")
    return FileResponse(target, headers=_HEADERS)


# ---- DICOMweb over the image cache --------------------------------------------------------------------------


def _exam(
    rt: WebRuntime, consumer: DrimboxConsumer | None, actor: Actor, study: str, path: str
) -> tuple[FetchView, ImageCache]:
    """The cached exam ``study`` and the cache it is in, if the professional may see its patient; else 404 (no
    such exam) or the refusal."""
    if consumer is None:
        raise HTTPException(404, "Aucun examen d'un autre établissement sur ce site")
    view = consumer.cache.complete_study(study)
    if view is None:
        raise HTTPException(404, "Examen absent du cache d'images de ce site")
    with rt.db.session() as s:
        ensure_patient(s, rt, actor, Action.DMP_CONSULT, view.patient_id, path)
    return view, consumer.cache


def _dicom_json(body: Any) -> Response:
    return JSONResponse(body, media_type="application/dicom+json", headers={"Cache-Control": "no-store"})


@router.get(BASENAME + "/dicom-web/studies")
async def qido_studies(
    actor: Viewer,
    rt: Rt,
    consumer: Consumer,
    request: Request,
    study: Annotated[str, Query(alias="StudyInstanceUID", pattern=UID_PATTERN, max_length=UID_MAX)] = "",
) -> Response:
    """The study the viewer opens, searched by its UID; any other search (the viewer's look for the patient's
    prior studies) finds nothing: no list of exams across patients from here."""
    if not study:
        return _dicom_json([])
    try:
        view, cache = await asyncio.to_thread(_exam, rt, consumer, actor, study, request.url.path)
        paths = await asyncio.to_thread(cache.instances, view.kos_sop_instance_uid)
    except HTTPException as exc:
        if exc.status_code == 404:
            return _dicom_json([])
        raise

    def _audit() -> None:
        with rt.db.session() as s:
            detail = {"examen": study, "manifeste": view.kos_sop_instance_uid}
            audit.record(s, actor, "view_images", view.patient_id, "imagerie", detail)

    await asyncio.to_thread(_audit)
    return _dicom_json([await asyncio.to_thread(study_json, paths)])


@router.get(BASENAME + "/dicom-web/studies/{study}/series")
async def qido_series(actor: Viewer, rt: Rt, consumer: Consumer, request: Request, study: Uid) -> Response:
    view, cache = await asyncio.to_thread(_exam, rt, consumer, actor, study, request.url.path)
    paths = await asyncio.to_thread(cache.instances, view.kos_sop_instance_uid)
    return _dicom_json(await asyncio.to_thread(series_json, paths))


@router.get(BASENAME + "/dicom-web/studies/{study}/series/{series}/metadata")
async def wado_metadata(
    actor: Viewer, rt: Rt, consumer: Consumer, request: Request, study: Uid, series: Uid
) -> Response:
    view, cache = await asyncio.to_thread(_exam, rt, consumer, actor, study, request.url.path)
    chosen = await asyncio.to_thread(cache.instances, view.kos_sop_instance_uid, series)
    if not chosen:
        raise HTTPException(404, "Série absente de cet examen")
    return _dicom_json(await asyncio.to_thread(instance_metadata, chosen))


@router.get(BASENAME + "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def wado_frames(
    actor: Viewer,
    rt: Rt,
    consumer: Consumer,
    request: Request,
    study: Uid,
    series: Uid,
    instance: Uid,
    frames: Annotated[str, Path(pattern=r"^\d{1,5}(,\d{1,5}){0,99}$")],
) -> Response:
    view, cache = await asyncio.to_thread(_exam, rt, consumer, actor, study, request.url.path)
    # The one file asked for, not a listing of the exam: the viewer asks for frames by the hundred.
    path = cache.instance(view.kos_sop_instance_uid, series, instance)
    if path is None:
        raise HTTPException(404, "Instance absente de cette série")
    try:
        parts = [await asyncio.to_thread(frame, path, int(n)) for n in frames.split(",")]
    except FrameError as exc:
        raise HTTPException(404, str(exc)) from exc
    content_type, body = multipart_parts(parts)
    return Response(b"".join(body), media_type=content_type, headers={"Cache-Control": "no-store"})


# Last of this router: every other path under /visionneuse is the viewer's own (its client-side routes).
@router.get(BASENAME)
@router.get(BASENAME + "/{page:path}")
async def viewer_page(_: Viewer, rt: Rt, page: str = "") -> Response:
    index = _dist(rt) / "index.html"
    if not index.is_file():
        raise HTTPException(
            503, "Visionneuse non installée sur ce serveur (make install, ou opensegur.ops.viewer_install)"
        )
    return FileResponse(index, media_type="text/html", headers=_HEADERS)
