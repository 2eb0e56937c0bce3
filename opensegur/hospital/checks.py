"""Consistency between the files, once each is valid alone: nothing declared twice, nothing referenced that is
not declared. Problems are located by their path in :class:`~opensegur.hospital.model.HospitalConfig`."""

from __future__ import annotations

from opensegur.hospital.locate import PathPart
from opensegur.hospital.model import HospitalConfig

Problem = tuple[tuple[PathPart, ...], str]


def check_references(config: HospitalConfig) -> list[Problem]:
    return [*_sites(config), *_dpis(config), *_mailboxes(config)]


def _sites(config: HospitalConfig) -> list[Problem]:
    out: list[Problem] = []
    finess: dict[str, str] = {config.ght.finess: "le GHT (ght.toml)"}
    namespaces: dict[str, str] = {}
    oids: dict[str, str] = {}
    names: dict[str, str] = {}  # every name that resolves an incoming message to a site
    for i, site in enumerate(config.sites):
        where = f"le site « {site.name} »"
        if site.finess in finess:
            out.append(
                (("sites", i, "finess"), f"FINESS {site.finess} déjà déclaré pour {finess[site.finess]}")
            )
        finess.setdefault(site.finess, where)
        domain = site.ipp_domain
        if domain.namespace in namespaces:
            out.append(
                (
                    ("sites", i, "ipp_domain", "namespace"),
                    f"Domaine d'IPP « {domain.namespace} » déjà utilisé par {namespaces[domain.namespace]} : "
                    "chaque site a son propre domaine d'identification",
                )
            )
        namespaces.setdefault(domain.namespace, where)
        if domain.oid in oids:
            out.append(
                (
                    ("sites", i, "ipp_domain", "oid"),
                    f"OID de domaine d'IPP « {domain.oid} » déjà utilisé par {oids[domain.oid]}",
                )
            )
        oids.setdefault(domain.oid, where)
        codes: set[str] = set()
        for j, unit in enumerate(site.units):
            if unit.code in codes:
                out.append(
                    (("sites", i, "units", j, "code"), f"UF « {unit.code} » déclarée deux fois dans {where}")
                )
            codes.add(unit.code)
        for n in {site.finess, domain.namespace, domain.oid}:
            names.setdefault(n, where)
    for i, site in enumerate(config.sites):
        where = f"le site « {site.name} »"
        for j, alias in enumerate(site.facility_aliases):
            owner = names.setdefault(alias, where)
            if owner != where:
                out.append(
                    (
                        ("sites", i, "facility_aliases", j),
                        f"Alias « {alias} » ambigu : il désigne déjà {owner}",
                    )
                )
    return out


def _unknown_site(finess: str) -> str:
    return f"Site {finess} inconnu : déclarez-le dans sites.toml (finess) ou corrigez le FINESS"


def _dpis(config: HospitalConfig) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    for i, dpi in enumerate(config.dpis):
        if dpi.name in seen:
            out.append((("dpis", i, "name"), f"DPI « {dpi.name} » déclaré deux fois"))
        seen.add(dpi.name)
        if config.site(dpi.site) is None:
            out.append((("dpis", i, "site"), _unknown_site(dpi.site)))
    return out


def _mailboxes(config: HospitalConfig) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    for i, box in enumerate(config.mailboxes):
        if box.address.lower() in seen:
            out.append((("mailboxes", i, "address"), f"Boîte « {box.address} » déclarée deux fois"))
        seen.add(box.address.lower())
        site = config.site(box.site)
        if site is None:
            out.append((("mailboxes", i, "site"), _unknown_site(box.site)))
        elif box.unit is not None and box.unit not in {u.code for u in site.units}:
            out.append(
                (
                    ("mailboxes", i, "unit"),
                    f"UF « {box.unit} » inconnue sur le site « {site.name} » : déclarez-la dans sites.toml (units)",
                )
            )
    return out
