"""DMP connector: the XDS.b transactions (ITI-41, ITI-18, ITI-43, ITI-57) and TD0.2 over SOAP 1.2 with a signed
VIHF — the ``DmpPort`` of the DMP feed (mode INDIRECTE, the platform as automaton) and the ``DmpConsultPort`` of
consultation (mode INDIRECTE_RENFORCEE, the logged-in professional as subject). mTLS and endpoints come from
configuration; the sandbox DMP in the demo."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from lxml import etree

from opensegur.connectors.annuaire_client import AnnuaireClient, AnnuaireError
from opensegur.content.jdv import content_type_code_for_patient_class
from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata
from opensegur.flows.dmp_consult import OID_SPECIALTY, ConsultationRefused, Consulter, DmpAccess
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError, ExchangeRecord
from opensegur.flows.dmp_feed import DmpOutcome, DmpRequest
from opensegur.transactions import xds
from opensegur.transactions.td02 import (
    ACTION_TD02,
    Td02Error,
    Td02Response,
    build_td02_request,
    parse_td02_response,
)
from opensegur.transactions.vihf import VihfContext, build_vihf, wsse_security_header
from opensegur.transactions.xades import SignedDocument, sign_submission_set
from opensegur.transport.mtom import build_mtom, parse_mtom, post_mtom
from opensegur.transport.soap import (
    SoapFaultError,
    SoapFormatError,
    SoapTransportError,
    envelope,
    parse_envelope,
    wsa_headers,
)

AUTOMATE = Coded("AUTOMATE", "1.2.250.1.213.1.1.4.6", "Automate")
STATUS_DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
_seq = itertools.count(1)


@dataclass(frozen=True)
class DmpEndpoints:
    iti41: str
    iti18: str
    iti57: str
    iti43: str | None = None
    td02: str | None = None
    # The DMP publishes no web service for its access history (digest ⚠): the sandbox's JSON extension, or None.
    access_history: str | None = None


@dataclass(frozen=True)
class DmpCredentials:
    """The structure's signature certificate (VIHF, XAdES) and, optionally, its TLS client certificate."""

    signing_cert: Path
    signing_key: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class DmpIdentity:
    """Who the platform says it is in the VIHF and the submission sets."""

    oid_root: str  # the platform's OID arc: submission-set uniqueIds and sourceId are built under it
    lps_name: str = "OpenSegur"
    lps_version: str = "0.1.0"
    lps_homologation_id: str = "OPENSEGUR-SANDBOX"
    responsible_id: str = "OPENSEGUR-PFI"  # the person responsible for the automated processing
    responsible_name: str = "OpenSégur, PFI, flux DMP"


def _read_response(content_type: str, raw: bytes) -> tuple[etree._Element, dict[str, bytes]]:
    env_bytes, parts = parse_mtom(content_type, raw, 100_000_000)
    _headers, body = parse_envelope(env_bytes)
    return body, parts


class DmpClient:
    def __init__(
        self,
        endpoints: DmpEndpoints,
        credentials: DmpCredentials,
        identity: DmpIdentity,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.credentials = credentials
        self.identity = identity
        self.timeout = timeout
        self._key = credentials.signing_key.read_bytes()
        self._cert = credentials.signing_cert.read_bytes()
        cert: tuple[str, str] | None = None
        if credentials.tls_cert and credentials.tls_key:
            cert = (str(credentials.tls_cert), str(credentials.tls_key))
        self._http = httpx.AsyncClient(
            transport=transport, cert=cert, verify=str(credentials.ca) if credentials.ca else True
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _oid(self) -> str:
        # Unique under our arc: time in ms plus a process counter and a random part for several hosts.
        return f"{self.identity.oid_root}.{int(time.time() * 1000)}.{next(_seq)}{uuid.uuid4().int % 100000}"

    def _vihf(self, structure: dict[str, Any], patient_cx: str) -> etree._Element:
        ctx = VihfContext(
            subject_id=self.identity.responsible_id,
            subject_name=self.identity.responsible_name,
            roles=[AUTOMATE],
            structure_id=structure["idnat_struct"],
            secteur_activite=structure.get("settings", {}).get("secteur_activite", "SA01"),
            patient_ins=patient_cx,
            lps_name=self.identity.lps_name,
            lps_version=self.identity.lps_version,
            lps_homologation_id=self.identity.lps_homologation_id,
        )
        return build_vihf(ctx, self._key, self._cert)

    def _consult_vihf(self, consulter: Consulter, patient_cx: str) -> etree._Element:
        """AIR: the structure's certificate signs, the logged-in professional is the subject."""
        ctx = VihfContext(
            subject_id=consulter.idnat_ps,
            subject_name=consulter.name,
            roles=list(consulter.roles),
            structure_id=consulter.structure_id,
            secteur_activite=consulter.secteur_activite,
            patient_ins=patient_cx,
            lps_name=self.identity.lps_name,
            lps_version=self.identity.lps_version,
            lps_homologation_id=self.identity.lps_homologation_id,
            purpose_of_use=consulter.purpose_of_use,
            authentication_mode="INDIRECTE_RENFORCEE",
        )
        return build_vihf(ctx, self._key, self._cert)

    async def _call(
        self,
        transaction: str,
        url: str,
        action: str,
        body: etree._Element,
        vihf: etree._Element,
        attachments: dict[str, bytes] | None = None,
    ) -> tuple[etree._Element, dict[str, bytes], ExchangeRecord]:
        headers = [*wsa_headers(action, to=url), wsse_security_header(vihf)]
        env = envelope(body, headers)
        content_type, chunks = build_mtom(env, attachments or {}, action=action)
        request_bytes = (
            env  # the envelope is what disputes are about; attachments are stored with the document
        )
        started = time.monotonic()
        exchange = ExchangeRecord(transaction, url, request_bytes, None, None, 0)
        try:
            resp_type, raw = await post_mtom(self._http, url, content_type, chunks, self.timeout)
        except SoapFaultError as exc:
            exchange = replace(
                exchange, http_status=exc.http_status, duration_ms=int((time.monotonic() - started) * 1000)
            )
            raise DmpRejectedError(exc.subcode or exc.code, exc.reason, [exchange]) from exc
        except SoapTransportError as exc:
            exchange = replace(
                exchange, http_status=exc.status_code, duration_ms=int((time.monotonic() - started) * 1000)
            )
            if exc.retryable:
                raise DmpUnavailableError(str(exc), [exchange], outage=True) from exc
            raise DmpRejectedError("HTTP", str(exc), [exchange]) from exc
        exchange = replace(
            exchange, response=raw, http_status=200, duration_ms=int((time.monotonic() - started) * 1000)
        )
        try:
            # Off the event loop: a DMP answer of 200 entries is over a megabyte of XML (tens of milliseconds).
            response_body, parts = await asyncio.to_thread(_read_response, resp_type, raw)
        except (SoapFormatError, ValueError) as exc:
            raise DmpUnavailableError(f"Réponse du DMP illisible : {exc}", [exchange]) from exc
        except SoapFaultError as exc:
            raise DmpRejectedError(exc.subcode or exc.code, exc.reason, [exchange]) from exc
        return response_body, parts, exchange

    @staticmethod
    def _check(result: xds.RegistryResult, exchanges: list[ExchangeRecord]) -> None:
        if not result.ok:
            first = result.errors[0] if result.errors else xds.XdsErrorInfo("XDSRegistryError", "Échec")
            raise DmpRejectedError(first.code, first.context, exchanges)

    # ---- DmpPort ----------------------------------------------------------------------------------------------

    async def find(
        self, structure: dict[str, Any], patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None:
        body = xds.build_get_documents(unique_ids=[unique_id])
        response, _parts, exchange = await self._call(
            "ITI-18", self.endpoints.iti18, xds.ACTION_ITI18, body, self._vihf(structure, patient_cx)
        )
        result = xds.parse_query_response(response)
        if result.status != "Success":
            first = result.errors[0] if result.errors else None
            raise DmpRejectedError(
                first.code if first else "XDSRegistryError",
                first.context if first else "Échec de la recherche",
                [exchange],
            )
        live = [d for d in result.documents if (d.availability_status or "Approved") != "Deleted"]
        return live[0] if live else None

    async def register(self, request: DmpRequest, replaces: DocumentMetadata | None) -> DmpOutcome:
        metadata = replace(request.metadata, entry_uuid=None)
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        content_type = content_type_code_for_patient_class(
            request.stay_class or "I"
        ) or content_type_code_for_patient_class("I")
        assert content_type is not None
        ss = SubmissionSetMetadata(
            unique_id=self._oid(),
            source_id=self.identity.oid_root,
            patient_id=metadata.patient_id,
            content_type_code=content_type,
            submission_time=now,
            authors=list(metadata.authors[:1]),
            title="Dépôt OpenSégur",
        )
        signature = sign_submission_set(
            ss.unique_id,
            [SignedDocument(metadata.unique_id, request.cda, metadata.mime_type)],
            self._key,
            self._cert,
            signature_id=self._oid(),
        )
        metadata.entry_uuid = f"urn:uuid:{uuid.uuid4()}"
        rplc = {metadata.entry_uuid: replaces.entry_uuid} if replaces and replaces.entry_uuid else None
        body, attachments = xds.build_provide_and_register(
            ss, [(metadata, request.cda)], replaces=rplc, signature=signature
        )
        response, _parts, exchange = await self._call(
            "ITI-41",
            self.endpoints.iti41,
            xds.ACTION_ITI41,
            body,
            self._vihf(request.structure, metadata.patient_id),
            attachments,
        )
        self._check(xds.parse_registry_response(response), [exchange])
        return DmpOutcome(metadata.entry_uuid, [exchange])

    async def delete(self, structure: dict[str, Any], entry: DocumentMetadata) -> DmpOutcome:
        assert entry.entry_uuid is not None
        exchange = await self._update(
            self._vihf(structure, entry.patient_id),
            entry,
            "Suppression OpenSégur",
            status_updates=[xds.StatusUpdate(entry.entry_uuid, xds.STATUS_APPROVED, STATUS_DELETED)],
        )
        return DmpOutcome(entry.entry_uuid, [exchange])

    async def _update(
        self,
        vihf: etree._Element,
        entry: DocumentMetadata,
        title: str,
        *,
        metadata_updates: Sequence[tuple[DocumentMetadata, str]] = (),
        status_updates: Sequence[xds.StatusUpdate] = (),
    ) -> ExchangeRecord:
        """ITI-57 on one entry (TD3.3): a submission set of the entry's patient carrying the updates."""
        ss = SubmissionSetMetadata(
            unique_id=self._oid(),
            source_id=self.identity.oid_root,
            patient_id=entry.patient_id,
            content_type_code=content_type_code_for_patient_class("I") or Coded("03", "1.2.250.1.213.2.2"),
            submission_time=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
            authors=list(entry.authors[:1]),
            title=title,
        )
        body = xds.build_update_document_set(
            ss, metadata_updates=metadata_updates, status_updates=status_updates
        )
        response, _parts, exchange = await self._call(
            "ITI-57", self.endpoints.iti57, xds.ACTION_ITI57, body, vihf
        )
        self._check(xds.parse_registry_response(response), [exchange])
        return exchange

    # ---- DmpConsultPort ---------------------------------------------------------------------------------------

    async def status(self, consulter: Consulter, patient_cx: str) -> Td02Response:
        if not self.endpoints.td02:
            raise DmpUnavailableError("TD0.2 : aucune adresse configurée (dmp_td02_url)", [])
        body = build_td02_request(patient_cx)
        response, _parts, exchange = await self._call(
            "TD0.2", self.endpoints.td02, ACTION_TD02, body, self._consult_vihf(consulter, patient_cx)
        )
        try:
            return parse_td02_response(response)
        except Td02Error as exc:
            raise DmpUnavailableError(f"Réponse TD0.2 illisible : {exc}", [exchange]) from exc

    async def find_documents(
        self,
        consulter: Consulter,
        patient_cx: str,
        *,
        since: datetime | None,
        until: datetime | None = None,
        type_codes: Sequence[Coded] | None = None,
        event_codes: Sequence[Coded] | None = None,
        with_deprecated: bool = False,
    ) -> list[DocumentMetadata]:
        body = xds.build_find_documents(
            patient_cx,
            (xds.STATUS_APPROVED, xds.STATUS_DEPRECATED) if with_deprecated else (xds.STATUS_APPROVED,),
            type_codes=type_codes,
            event_codes=event_codes,
            # PDSM4DMP: the first search is bounded on the acts' date (serviceStartTime), not on the documents'.
            service_start_time_from=since.strftime("%Y%m%d%H%M%S") if since else None,
            service_start_time_to=until.strftime("%Y%m%d%H%M%S") if until else None,
        )
        return (await self._consult_query(consulter, patient_cx, body)).documents

    async def get_document(
        self, consulter: Consulter, patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None:
        result = await self._consult_query(
            consulter, patient_cx, xds.build_get_documents(unique_ids=[unique_id])
        )
        # A visibility change keeps the uniqueId under a new version: the Approved one is the current one.
        found = [d for d in result.documents if d.unique_id == unique_id]
        return min(found, key=lambda d: (d.availability_status or "Approved") != "Approved", default=None)

    async def find_submission_sets(
        self, consulter: Consulter, patient_cx: str, *, since: datetime
    ) -> list[str]:
        body = xds.build_find_submission_sets(
            patient_cx, submission_time_from=since.strftime("%Y%m%d%H%M%S"), return_type="ObjectRef"
        )
        return (await self._consult_query(consulter, patient_cx, body)).object_refs

    async def get_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> list[xds.Association]:
        body = xds.build_get_associations(uuids)
        return (await self._consult_query(consulter, patient_cx, body)).associations

    async def get_documents_and_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> tuple[list[DocumentMetadata], list[xds.Association]]:
        result = await self._consult_query(
            consulter, patient_cx, xds.build_get_documents_and_associations(uuids=uuids)
        )
        return result.documents, result.associations

    async def _consult_query(
        self, consulter: Consulter, patient_cx: str, body: etree._Element
    ) -> xds.QueryResult:
        """ITI-18 in the professional's name; the registry's errors as DmpRejectedError."""
        response, _parts, exchange = await self._call(
            "ITI-18", self.endpoints.iti18, xds.ACTION_ITI18, body, self._consult_vihf(consulter, patient_cx)
        )
        result = await asyncio.to_thread(xds.parse_query_response, response)
        if result.status not in ("Success", "PartialSuccess"):
            first = result.errors[0] if result.errors else xds.XdsErrorInfo("XDSRegistryError", "Échec")
            raise DmpRejectedError(first.code, first.context, [exchange])
        return result

    async def retrieve(
        self, consulter: Consulter, patient_cx: str, repository_unique_id: str, unique_id: str
    ) -> xds.RetrievedDocument:
        if not self.endpoints.iti43:
            raise DmpUnavailableError("ITI-43 : aucune adresse configurée (dmp_iti43_url)", [])
        body = xds.build_retrieve_request([xds.RetrieveRequest(repository_unique_id, unique_id)])
        response, parts, exchange = await self._call(
            "ITI-43", self.endpoints.iti43, xds.ACTION_ITI43, body, self._consult_vihf(consulter, patient_cx)
        )
        result, docs = xds.parse_retrieve_response(response, parts)
        found = [d for d in docs if d.document_unique_id == unique_id]
        if not found:
            first = (
                result.errors[0] if result.errors else xds.XdsErrorInfo("XDSDocumentUniqueIdError", unique_id)
            )
            raise DmpRejectedError(first.code, first.context, [exchange])
        return found[0]

    async def access_history(self, consulter: Consulter, patient_cx: str) -> list[DmpAccess] | None:
        if not self.endpoints.access_history:
            return None
        matricule = patient_cx.split("^", 1)[0]
        try:
            resp = await self._http.get(
                self.endpoints.access_history, params={"patient": matricule}, timeout=self.timeout
            )
            resp.raise_for_status()
            rows = resp.json()["accesses"]
            accesses = [
                DmpAccess(
                    at=datetime.fromisoformat(r["at"]),
                    professional=str(r["subject"]["name"] or r["subject"]["id"]),
                    structure=str(r["structure"]),
                    transaction=str(r["transaction"]),
                    purpose_of_use=str(r["purpose_of_use"]),
                    authentication_mode=str(r["authentication_mode"]),
                    outcome=str(r["outcome"]),
                )
                for r in rows
            ]
        except httpx.HTTPError as exc:
            raise DmpUnavailableError(f"Historique des accès indisponible : {exc}", []) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DmpUnavailableError(f"Historique des accès illisible : {exc!r}", []) from exc
        return sorted(accesses, key=lambda a: a.at, reverse=True)

    async def update_confidentiality(
        self, consulter: Consulter, patient_cx: str, entry: DocumentMetadata, codes: Sequence[Coded]
    ) -> None:
        if not entry.logical_id or entry.version is None:
            raise DmpRejectedError(
                "XDSMetadataUpdateError", "entrée sans logicalId ni version : mise à jour impossible"
            )
        new = replace(entry, confidentiality_codes=list(codes), entry_uuid=None)
        await self._update(
            self._consult_vihf(consulter, patient_cx),
            entry,
            "Visibilité modifiée par son auteur",
            metadata_updates=[(new, str(entry.version))],
        )

    async def delete_document(self, consulter: Consulter, patient_cx: str, entry: DocumentMetadata) -> None:
        if not entry.entry_uuid:
            raise DmpRejectedError("XDSMetadataUpdateError", "entrée sans entryUUID : suppression impossible")
        await self._update(
            self._consult_vihf(consulter, patient_cx),
            entry,
            "Suppression par son auteur",
            status_updates=[xds.StatusUpdate(entry.entry_uuid, xds.STATUS_APPROVED, STATUS_DELETED)],
        )


async def vihf_specialty(directory: AnnuaireClient | None, rpps: str) -> Coded:
    """The specialty the Annuaire Santé records for ``rpps``: the VIHF's second role for a physician. Raises
    ConsultationRefused with the French reason when the directory is absent, silent or knows none."""
    if directory is None:
        raise ConsultationRefused(
            "Annuaire Santé non configuré : la spécialité du médecin, exigée par le VIHF du DMP, est inconnue"
        )
    try:
        found = await directory.practitioner(rpps)
    except AnnuaireError as exc:
        raise ConsultationRefused(f"Annuaire Santé injoignable, spécialité inconnue : {exc}") from exc
    if found is None or not found.specialty_code:
        raise ConsultationRefused(
            f"Aucune spécialité n'est enregistrée dans l'Annuaire Santé pour le RPPS {rpps} : "
            "le VIHF du DMP l'exige pour un médecin"
        )
    return Coded(found.specialty_code, OID_SPECIALTY, found.specialty or found.specialty_code)
