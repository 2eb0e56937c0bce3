"""`opensegur doctor`: each link of the deployment tested from where the platform runs, and what to fix, in
French — the RIS's MLLP listener, the PACS (C-ECHO, C-FIND), the DMP, Pro Santé Connect, the Annuaire Santé,
and the certificates' validity. Its output doubles as the evidence of a deployment audit.

A link the settings leave unconfigured is said so, not counted as a failure: a site without imaging has no PACS.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from opensegur.config import Settings
from opensegur.connectors.pacs import PacsClient, PacsEndpoint
from opensegur.flows.drimbox_ports import PacsError
from opensegur.security.drimbox_directory import DirectoryError, file_loader

__all__ = ["Check", "ServiceUrls", "Verdict", "check_certificates", "check_pacs", "diagnose", "render"]

CERT_WARNING = timedelta(days=30)
# A study UID nobody has: the C-FIND must answer, with nothing.
_PROBE_STUDY = "1.2.250.1.999.0.0.1"


class Verdict(StrEnum):
    OK = "ok"
    WARNING = "alerte"
    FAILED = "échec"
    ABSENT = "non configuré"


@dataclass(frozen=True)
class Check:
    link: str
    verdict: Verdict
    detail: str
    fix: str = ""


def check_pacs(settings: Settings) -> list[Check]:
    if not settings.pacs_host:
        return [Check("PACS", Verdict.ABSENT, "pacs_host absent : la DRIMbox source est désactivée")]
    endpoint = PacsEndpoint(
        settings.pacs_host,
        settings.pacs_port,
        settings.pacs_aet,
        settings.drimbox_aet,
        settings.pacs_timeout_s,
    )
    client = PacsClient(endpoint)
    declared = (
        f"Vérifier que le PACS déclare le titre AE {settings.drimbox_aet} avec l'adresse de cette machine, et "
        f"que {settings.pacs_host}:{settings.pacs_port} (titre {settings.pacs_aet}) est joignable"
    )
    try:
        client.echo()
    except PacsError as exc:
        return [Check("PACS : C-ECHO", Verdict.FAILED, str(exc), declared)]
    checks = [Check("PACS : C-ECHO", Verdict.OK, f"{endpoint} répond")]
    try:
        client.find_instances(_PROBE_STUDY)
    except PacsError as exc:
        checks.append(
            Check(
                "PACS : C-FIND",
                Verdict.FAILED,
                str(exc),
                "Autoriser les requêtes C-FIND (Study Root) pour ce titre AE",
            )
        )
    else:
        checks.append(Check("PACS : C-FIND", Verdict.OK, "requête d'examen acceptée"))
    return checks


def _certificate_paths(settings: Settings) -> Iterable[tuple[str, str]]:
    for label, path in (
        ("Certificat de signature DMP (VIHF, XAdES)", settings.dmp_signing_cert),
        ("Certificat TLS client DMP", settings.dmp_tls_cert),
        ("Certificat de la BAL applicative MSSanté", settings.mss_client_cert),
        ("Certificat TLS client INSi", settings.insi_client_cert),
        ("Certificat TLS du serveur MLLP", settings.mllp_tls_cert),
        ("Certificat du DRIMbox (TLS mutuel, serveur)", settings.drimbox_tls_cert),
        ("Certificat du DRIMbox (TLS mutuel, client)", settings.drimbox_client_cert),
    ):
        if path:
            yield label, str(path)


def check_certificates(settings: Settings, now: datetime | None = None) -> list[Check]:
    now = now or datetime.now(UTC)
    checks = []
    for label, path in _certificate_paths(settings):
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            checks.append(
                Check(
                    label, Verdict.FAILED, f"{path} illisible ({exc})", "Vérifier le chemin et le format PEM"
                )
            )
            continue
        end = cert.not_valid_after_utc
        left = end - now
        day = end.strftime("%d/%m/%Y")
        if left <= timedelta(0):
            checks.append(
                Check(label, Verdict.FAILED, f"expiré le {day}", "Renouveler le certificat (IGC-Santé)")
            )
        elif left < CERT_WARNING:
            checks.append(
                Check(
                    label,
                    Verdict.WARNING,
                    f"expire le {day}, dans {left.days} jours",
                    "Commander le renouvellement",
                )
            )
        else:
            checks.append(Check(label, Verdict.OK, f"valide jusqu'au {day}"))
    if not checks:
        checks.append(Check("Certificats", Verdict.ABSENT, "aucun certificat configuré (bac à sable)"))
    return checks


def check_directory(settings: Settings) -> Check:
    """The ANS's list of trusted DRIMboxes: present, signed by the configured signer, how many DRIMboxes."""
    link = "Liste blanche des DRIMbox"
    if settings.drimbox_directory_file is None:
        why = "drimbox_directory_file absent : le consommateur DRIMbox ne demande aucune image"
        if settings.sandbox_on:
            why = "non configurée : la plateforme utilise celle du bac à sable"
        return Check(link, Verdict.ABSENT, why)
    try:
        directory = file_loader(
            settings.drimbox_directory_file,
            settings.drimbox_directory_ca,
            settings.drimbox_directory_signer_cn,
        )()
    except DirectoryError as exc:
        return Check(link, Verdict.FAILED, str(exc), "Télécharger la liste blanche signée de l'ANS")
    return Check(
        link, Verdict.OK, f"signée, générée le {directory.generated or '?'}, {len(directory.entries)} DRIMbox"
    )


def check_mllp(settings: Settings) -> Check:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    try:
        with socket.create_connection((host, settings.mllp_port), timeout=3):
            return Check(
                "Écoute MLLP (RIS, DPI, GAM)",
                Verdict.OK,
                f"{host}:{settings.mllp_port} accepte les connexions",
            )
    except OSError as exc:
        return Check(
            "Écoute MLLP (RIS, DPI, GAM)",
            Verdict.FAILED,
            f"{host}:{settings.mllp_port} injoignable ({exc.strerror or exc})",
            "Démarrer `opensegur serve` ou vérifier mllp_port et le pare-feu",
        )


async def _reachable(http: httpx.AsyncClient, link: str, url: str | None, fix: str) -> Check:
    if not url:
        return Check(link, Verdict.ABSENT, "adresse absente des paramètres")
    try:
        resp = await http.get(url)
    except httpx.HTTPError as exc:
        return Check(link, Verdict.FAILED, f"{url} injoignable ({type(exc).__name__})", fix)
    if resp.status_code >= 500:
        return Check(link, Verdict.FAILED, f"{url} répond {resp.status_code}", fix)
    return Check(link, Verdict.OK, f"{url} répond ({resp.status_code})")


@dataclass(frozen=True)
class ServiceUrls:
    """Where the national services are: the settings', or those a running platform uses (its sandbox's)."""

    dmp_registry: str | None
    psc_discovery: str | None
    annuaire: str | None
    pacs_wado: str | None = None  # a QIDO-RS search of the PACS's own DICOMweb, when it has one
    other_drimbox: str | None = (
        None  # the sandbox's remote DRIMbox (the directory of DRIMboxes is not built yet)
    )

    @classmethod
    def of(cls, settings: Settings, endpoints: dict[str, Any] | None = None) -> ServiceUrls:
        endpoints = endpoints or {}
        psc = settings.drimbox_psc_introspection_url
        discovery = (
            psc.split("/protocol/openid-connect/")[0] + "/.well-known/openid-configuration" if psc else None
        )
        return cls(
            settings.dmp_iti18_url or (endpoints.get("dmp") or {}).get("iti18"),
            discovery or (endpoints.get("psc") or {}).get("discovery"),
            settings.annuaire_url or (endpoints.get("annuaire") or {}).get("url"),
            f"{settings.pacs_wado_url.rstrip('/')}/studies?limit=1" if settings.pacs_wado_url else None,
            (endpoints.get("drimbox") or {}).get("wado"),
        )


async def check_services(
    settings: Settings, urls: ServiceUrls | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> list[Check]:
    """The national services over HTTP: any answer below 500 proves the network path and TLS; the protocols
    themselves are the flows' business."""
    urls = urls or ServiceUrls.of(settings)
    async with httpx.AsyncClient(timeout=10, transport=transport, verify=settings.dmp_ca or True) as http:
        return list(
            await asyncio.gather(
                _reachable(
                    http, "DMP (registre ITI-18)", urls.dmp_registry, "Vérifier dmp_iti18_url et le proxy"
                ),
                _reachable(
                    http,
                    "Pro Santé Connect (découverte)",
                    urls.psc_discovery,
                    "Vérifier drimbox_psc_introspection_url",
                ),
                _reachable(http, "Annuaire Santé", urls.annuaire, "Vérifier annuaire_url et la clé d'API"),
                *(
                    [_reachable(http, "PACS : WADO-RS", urls.pacs_wado, "Vérifier pacs_wado_url")]
                    if urls.pacs_wado
                    else []
                ),
                *(
                    [
                        _reachable(
                            http,
                            "DRIMbox distant (bac à sable)",
                            urls.other_drimbox,
                            "Redémarrer le bac à sable",
                        )
                    ]
                    if urls.other_drimbox
                    else []
                ),
            )
        )


async def diagnose(
    settings: Settings, *, with_listener: bool = True, endpoints: dict[str, Any] | None = None
) -> list[Check]:
    """Every check; ``endpoints``: those of the running platform (its sandbox's), where the settings name none."""
    checks = [await asyncio.to_thread(check_mllp, settings)] if with_listener else []
    checks += await asyncio.to_thread(check_pacs, settings)
    checks += await check_services(settings, ServiceUrls.of(settings, endpoints))
    checks.append(await asyncio.to_thread(check_directory, settings))
    checks += check_certificates(settings)
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.link) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.verdict.value.upper():<14} {c.link:<{width}}  {c.detail}")
        if c.fix and c.verdict in (Verdict.FAILED, Verdict.WARNING):
            lines.append(f"{'':<14} {'':<{width}}  → {c.fix}")
    failed = sum(c.verdict is Verdict.FAILED for c in checks)
    warned = sum(c.verdict is Verdict.WARNING for c in checks)
    lines.append(f"\n{len(checks)} vérifications : {failed} en échec, {warned} en alerte")
    return "\n".join(lines)
