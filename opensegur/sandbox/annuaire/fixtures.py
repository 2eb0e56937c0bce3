"""Fictitious content of the sandbox directory, rendered as the FHIR resources the Annuaire Santé API v2 serves.

Who is in it:

* the demo GHT of :mod:`opensegur.ops.demo` (same FINESS, same RPPS for its six hospital professionals), with
  organisational and applicative mailboxes of its services and DPI;
* the recipients named in the ANS examples (HL7 v2 transmission guide, MSSanté mail IG): Dr Adam Hoda,
  Dr Thomas Eric, Dr Janet Blanc, Dr Jean Dupont of « hôpital A », the service Y of « CH B »… RPPS of the
  examples are kept when they pass the Luhn check (01234567897), replaced by fictitious ones otherwise;
* general practitioners in several cities, a city laboratory, a radiology practice, a midwife, a nurse.

Every RPPS and FINESS is fictitious and passes the Luhn check; names and addresses are invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opensegur.identity.directory import (
    EXT_EMAIL_TYPE,
    EXT_MAILBOX_METADATA,
    SYSTEM_FINESS,
    SYSTEM_ID_TYPE,
    SYSTEM_IDNAT_PS,
    SYSTEM_IDNAT_STRUCT,
    SYSTEM_MAILBOX_TYPE,
    SYSTEM_MESSAGING_TYPE,
    SYSTEM_ORG_TYPE,
    SYSTEM_PROFESSION,
    SYSTEM_SECTEUR_ACTIVITE,
    SYSTEM_SPECIALTY,
    SYSTEMS_RPPS,
)
from opensegur.identity.professionals import luhn_valid
from opensegur.ops.demo import demo_config, luhn_complete

__all__ = ["DirectoryData", "directory_mailboxes", "load_directory"]

_LAST_UPDATED = "2026-01-05T08:00:00.000+01:00"
_SOURCE = "https://annuaire.sante.fr"
_PROFILE = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-dp-"
_SYSTEM_SAVOIR_FAIRE_TYPE = (
    "https://mos.esante.gouv.fr/NOS/TRE_R04-TypeSavoirFaire/FHIR/TRE-R04-TypeSavoirFaire"
)
_SYSTEM_CATEGORY = (
    "https://mos.esante.gouv.fr/NOS/TRE_R09-CategorieProfessionnelle/FHIR/TRE-R09-CategorieProfessionnelle"
)
_SYSTEM_MODE = "https://mos.esante.gouv.fr/NOS/TRE_R23-ModeExercice/FHIR/TRE-R23-ModeExercice"

BRETEUIL_FINESS, SAINT_VINCENT_FINESS = (site.finess for site in demo_config().sites)


@dataclass(frozen=True)
class _Box:
    address: str
    type: str  # TRE_R257: PER, CAB, ORG, APP
    description: str | None = None
    service: str | None = None


@dataclass(frozen=True)
class _Org:
    key: str
    name: str
    city: str
    postal_code: str
    line: str
    finess: str | None = None
    kind: str = "GEOGRAPHICAL-ENTITY"
    secteur: str | None = None
    part_of: str | None = None
    boxes: tuple[_Box, ...] = ()


@dataclass(frozen=True)
class _Role:
    org: str
    mode: str = "S"  # TRE_R23: S salarié, L libéral
    boxes: tuple[_Box, ...] = ()


@dataclass(frozen=True)
class _Pract:
    rpps: str
    family: str
    given: str
    profession: str
    specialty: str | None
    roles: tuple[_Role, ...]
    boxes: tuple[_Box, ...] = ()
    civility: str | None = "DR"


def _cabinet(key: str, name: str, city: str, postal_code: str, line: str) -> _Org:
    return _Org(key, name, city, postal_code, line, kind="GEOGRAPHICAL-ENTITY", secteur="SA07")


def _rpps(n: int) -> str:
    return luhn_complete(f"1001{n:06d}")


def _demo_rpps(i: int) -> str:
    """The RPPS ops.demo gives its i-th hospital professional."""
    return luhn_complete(f"1000{i + 1:06d}")


ORGANIZATIONS: tuple[_Org, ...] = (
    _Org(
        "ght",
        "GHT Rives de Seine (démo)",
        "PARIS",
        "75007",
        "1 place du Docteur Fictif",
        finess=demo_config().ght.finess,
        kind="LEGAL-ENTITY",
    ),
    _Org(
        "breteuil",
        demo_config().sites[0].name,
        "PARIS",
        "75007",
        "12 avenue de Breteuil",
        finess=BRETEUIL_FINESS,
        secteur="SA01",
        part_of="ght",
        boxes=(
            _Box("radiologie@hopitalA.mssante.fr", "ORG", "Secrétariat du service de radiologie", "Imagerie"),
            _Box("dpi@hopitalA.mssante.fr", "APP", "DPI — intégration automatique des documents reçus"),
        ),
    ),
    _Org(
        "saint-vincent",
        demo_config().sites[1].name,
        "PARIS",
        "75014",
        "74 rue Denfert-Rochereau",
        finess=SAINT_VINCENT_FINESS,
        secteur="SA01",
        part_of="ght",
        boxes=(
            _Box("serviceY@chb.mssante.fr", "ORG", "Secrétariat du service Y (cardiologie)", "Cardiologie"),
            _Box("serviceY_auto@chb.mssante.fr", "APP", "Service Y — accusés et retours d'intégration"),
            _Box("appliExemple@hopitalB.mssante.fr", "APP", "Logiciel de résultats du CH B"),
        ),
    ),
    _Org(
        "labo-lilas",
        "Laboratoire de biologie médicale des Lilas (démo)",
        "MONTREUIL",
        "93100",
        "3 rue des Lilas",
        finess=luhn_complete("93000001"),
        secteur="SA25",
        boxes=(
            _Box("biologie@labo-des-lilas.mssante.fr", "ORG", "Biologistes — résultats critiques"),
            _Box("sil@labo-des-lilas.mssante.fr", "APP", "SIL — comptes rendus de biologie"),
        ),
    ),
    _Org(
        "radio-parc",
        "Cabinet de radiologie du Parc (démo)",
        "LYON",
        "69006",
        "28 boulevard des Belges",
        finess=luhn_complete("69000002"),
        secteur="SA07",
        boxes=(_Box("secretariat@radiologie-du-parc.mssante.fr", "ORG", "Secrétariat — rendez-vous"),),
    ),
    _cabinet("cab-hoda", "Cabinet médical du Dr Hoda (démo)", "PARIS", "75011", "5 rue Fictive"),
    _cabinet("cab-fevrier", "Cabinet médical Croix-Rousse (démo)", "LYON", "69004", "9 rue d'Austerlitz"),
    _cabinet(
        "cab-bellecour", "Cabinet de cardiologie Bellecour (démo)", "LYON", "69002", "2 place Bellecour"
    ),
    _cabinet(
        "cab-lebreton", "Cabinet médical du Vieux-Lille (démo)", "LILLE", "59000", "14 rue de la Monnaie"
    ),
    _cabinet(
        "cab-martin-bx", "Maison de santé des Chartrons (démo)", "BORDEAUX", "33000", "40 quai des Chartrons"
    ),
    _cabinet("cab-nguyen", "Cabinet médical Bastille (démo)", "PARIS", "75012", "3 rue de Lyon"),
    _cabinet(
        "cab-durand", "Cabinet médical de Jaude (démo)", "CLERMONT-FERRAND", "63000", "18 place de Jaude"
    ),
    _cabinet(
        "cab-rousseau", "Cabinet médical du Cours Fauriel (démo)", "SAINT-ÉTIENNE", "42100", "7 cours Fauriel"
    ),
    _cabinet("cab-martin-p", "Cabinet médical Montparnasse (démo)", "PARIS", "75015", "60 rue Falguière"),
    _cabinet("cab-moreau", "Cabinet médical du Vieux-Port (démo)", "MARSEILLE", "13001", "1 quai du Port"),
    _cabinet(
        "cab-chevalier", "Cabinet de sages-femmes Saint-Michel (démo)", "BORDEAUX", "33800", "5 rue Camille"
    ),
    _cabinet("cab-robin", "Cabinet infirmier de Wazemmes (démo)", "LILLE", "59000", "22 rue des Sarrazins"),
)


def _per(address: str) -> tuple[_Box, ...]:
    return (_Box(address, "PER"),)


PRACTITIONERS: tuple[_Pract, ...] = (
    # ---- recipients of the ANS examples
    _Pract(
        "01234567897",
        "HODA",
        "Adam",
        "10",
        "SM54",
        (_Role("cab-hoda", "L"),),
        (_Box("adam.hoda@test-ci-sis.mssante.fr", "PER"), _Box("adam.hoda@medecin.mssante.fr", "PER")),
    ),
    # The examples give Dr Eric 801234564895 and Dr Blanc Dr Hoda's 801234567897: the first fails Luhn, the
    # second cannot belong to two people in a directory, so both get fictitious numbers.
    _Pract(
        _rpps(1), "ERIC", "Thomas", "10", "SM44", (_Role("breteuil"),), _per("thomas.eric@medecin.mssante.fr")
    ),
    _Pract(
        _rpps(2), "BLANC", "Janet", "10", "SM03", (_Role("breteuil"),), _per("janet.blanc@medecin.mssante.fr")
    ),
    _Pract(
        _rpps(3),
        "DUPONT",
        "Jean",
        "10",
        "SM27",
        (_Role("breteuil", boxes=_per("jean.dupont@hopital-A.mssante.fr")),),
    ),
    _Pract(_rpps(4), "DIAZ", "Thierry", "10", "SM03", (_Role("breteuil"),)),
    # ---- the demo GHT's hospital professionals (ops.demo), on the site ops.demo gives them
    _Pract(
        _demo_rpps(0),
        "RÉAULT",
        "Pierre",
        "10",
        "SM14",
        (_Role("breteuil", boxes=_per("pierre.reault@hopitalA.mssante.fr")),),
    ),
    _Pract(
        _demo_rpps(1),
        "AGNÈS",
        "Isabelle",
        "10",
        "SM54",
        (_Role("saint-vincent", boxes=_per("isabelle.agnes@chb.mssante.fr")),),
    ),
    _Pract(
        _demo_rpps(2),
        "LEBRUN",
        "Claire",
        "10",
        "SM44",
        (_Role("breteuil", boxes=_per("claire.lebrun@hopitalA.mssante.fr")),),
    ),
    _Pract(
        _demo_rpps(3),
        "OKAFOR",
        "Daniel",
        "50",
        None,
        (_Role("saint-vincent", boxes=_per("daniel.okafor@chb.mssante.fr")),),
        civility=None,
    ),
    _Pract(
        _demo_rpps(4),
        "MOREL",
        "Sophie",
        "60",
        None,
        (_Role("breteuil", boxes=_per("sophie.morel@hopitalA.mssante.fr")),),
        civility=None,
    ),
    _Pract(
        _demo_rpps(5),
        "BRUNET",
        "Alain",
        "10",
        "SM04",
        (_Role("saint-vincent", boxes=_per("alain.brunet@chb.mssante.fr")),),
    ),
    # ---- city practitioners
    _Pract(
        _rpps(10),
        "FÉVRIER",
        "Hélène",
        "10",
        "SM54",
        (_Role("cab-fevrier", "L"),),
        _per("helene.fevrier@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(11),
        "LE BRETON",
        "Loïc",
        "10",
        "SM54",
        (_Role("cab-lebreton", "L"),),
        _per("loic.le-breton@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(12),
        "MARTIN",
        "Paul",
        "10",
        "SM54",
        (_Role("cab-martin-bx", "L"),),
        _per("paul.martin@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(13),
        "NGUYEN",
        "Thi Lan",
        "10",
        "SM53",
        (_Role("cab-nguyen", "L"),),
        _per("thilan.nguyen@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(14),
        "DURAND",
        "Émilie",
        "10",
        "SM54",
        (_Role("cab-durand", "L"),),
        _per("emilie.durand@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(15),
        "ROUSSEAU",
        "Marc",
        "10",
        "SM26",
        (_Role("cab-rousseau", "L"),),
        _per("marc.rousseau@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(16),
        "MARTIN",
        "Claire",
        "10",
        "SM54",
        (_Role("cab-martin-p", "L"),),
        _per("claire.martin@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(17),
        "MOREAU",
        "Inès",
        "10",
        "SM54",
        (_Role("cab-moreau", "L"),),
        _per("ines.moreau@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(18),
        "BERNARD",
        "Julien",
        "10",
        "SM04",
        (
            _Role("cab-bellecour", "L", (_Box("cardio.bellecour@medecin.mssante.fr", "CAB", "Cabinet"),)),
            _Role("saint-vincent", boxes=_per("julien.bernard@chb.mssante.fr")),
        ),
        _per("julien.bernard@medecin.mssante.fr"),
    ),
    _Pract(
        _rpps(19),
        "GARNIER",
        "Anne",
        "10",
        "SM44",
        (_Role("radio-parc", "L"),),
        _per("anne.garnier@radiologie-du-parc.mssante.fr"),
    ),
    _Pract(
        _rpps(20),
        "PETIT",
        "Hugo",
        "10",
        "SM44",
        (_Role("radio-parc", "L"),),
        _per("hugo.petit@radiologie-du-parc.mssante.fr"),
    ),
    _Pract(
        _rpps(21),
        "FAURE",
        "Nathalie",
        "10",
        "SM03",
        (_Role("labo-lilas", "L"),),
        _per("nathalie.faure@labo-des-lilas.mssante.fr"),
    ),
    _Pract(
        _rpps(22),
        "CHEVALIER",
        "Lucie",
        "50",
        None,
        (_Role("cab-chevalier", "L"),),
        _per("lucie.chevalier@sagefemme.mssante.fr"),
        civility=None,
    ),
    _Pract(
        _rpps(23),
        "ROBIN",
        "Karim",
        "60",
        None,
        (_Role("cab-robin", "L"),),
        _per("karim.robin@infirmier.mssante.fr"),
        civility=None,
    ),
)


# ---- FHIR rendering ----------------------------------------------------------------------------------------


def _coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _telecom(box: _Box) -> dict[str, Any]:
    meta: list[dict[str, Any]] = [
        {"url": "type", "valueCodeableConcept": _coding(SYSTEM_MAILBOX_TYPE, box.type)},
        {"url": "listeRouge", "valueBoolean": False},
    ]
    if box.description:
        meta.append({"url": "description", "valueString": box.description})
    if box.service:
        meta.append({"url": "service", "valueString": box.service})
    return {
        "extension": [
            {"url": EXT_EMAIL_TYPE, "valueCoding": {"system": SYSTEM_MESSAGING_TYPE, "code": "MSSANTE"}},
            {"url": EXT_MAILBOX_METADATA, "extension": meta},
        ],
        "system": "email",
        "value": box.address,
    }


def _meta(kind: str) -> dict[str, Any]:
    return {"versionId": "1", "lastUpdated": _LAST_UPDATED, "source": _SOURCE, "profile": [_PROFILE + kind]}


def _identifier(type_code: str, system: str, value: str) -> dict[str, Any]:
    return {"use": "official", "type": _coding(SYSTEM_ID_TYPE, type_code), "system": system, "value": value}


def org_id(key: str) -> str:
    return f"001-{key}"


def practitioner_id(rpps: str) -> str:
    return f"003-{rpps}"


def _organization(org: _Org) -> dict[str, Any]:
    identifiers = []
    if org.finess:
        type_code = "FINEJ" if org.kind == "LEGAL-ENTITY" else "FINEG"
        identifiers.append(_identifier(type_code, SYSTEM_FINESS, org.finess))
        identifiers.append(_identifier("IDNST", SYSTEM_IDNAT_STRUCT, "1" + org.finess))
    else:
        identifiers.append(_identifier("INTRN", "https://annuaire.sante.fr", org_id(org.key)))
    types = [_coding(SYSTEM_ORG_TYPE, org.kind)]
    if org.secteur:
        types.append(_coding(SYSTEM_SECTEUR_ACTIVITE, org.secteur))
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": org_id(org.key),
        "meta": _meta("organization"),
        "language": "fr",
        "identifier": identifiers,
        "active": True,
        "type": types,
        "name": org.name,
        "address": [{"use": "work", "line": [org.line], "postalCode": org.postal_code, "city": org.city}],
    }
    if org.boxes:
        resource["telecom"] = [_telecom(b) for b in org.boxes]
    if org.part_of:
        resource["partOf"] = {"reference": f"Organization/{org_id(org.part_of)}"}
    return resource


def _practitioner(p: _Pract) -> dict[str, Any]:
    qualifications: list[dict[str, Any]] = [
        {
            "code": {
                "coding": [
                    {"system": SYSTEM_PROFESSION, "code": p.profession},
                    {"system": _SYSTEM_CATEGORY, "code": "C"},
                ]
            }
        }
    ]
    if p.specialty:
        qualifications.append(
            {
                "code": {
                    "coding": [
                        {"system": _SYSTEM_SAVOIR_FAIRE_TYPE, "code": "S"},
                        {"system": SYSTEM_SPECIALTY, "code": p.specialty},
                    ]
                }
            }
        )
    name: dict[str, Any] = {"use": "usual", "family": p.family, "given": [p.given]}
    if p.civility:
        name["suffix"] = [p.civility]
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": practitioner_id(p.rpps),
        "meta": _meta("practitioner"),
        "language": "fr",
        "identifier": [
            _identifier("IDNPS", SYSTEM_IDNAT_PS, "8" + p.rpps),
            _identifier("RPPS", SYSTEMS_RPPS[0], p.rpps),
        ],
        "active": True,
        "name": [name],
        "qualification": qualifications,
    }
    if p.boxes:
        resource["telecom"] = [_telecom(b) for b in p.boxes]
    return resource


def _role(p: _Pract, n: int, role: _Role) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": f"005-{p.rpps}-{n}",
        "meta": _meta("practitionerrole"),
        "language": "fr",
        "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner_id(p.rpps)}"},
        "organization": {"reference": f"Organization/{org_id(role.org)}"},
        "code": [_coding(_SYSTEM_MODE, role.mode)],
    }
    if role.boxes:
        resource["telecom"] = [_telecom(b) for b in role.boxes]
    return resource


@dataclass(frozen=True)
class DirectoryData:
    """The resources of the sandbox directory, by type, in a stable order."""

    practitioners: tuple[dict[str, Any], ...]
    roles: tuple[dict[str, Any], ...]
    organizations: tuple[dict[str, Any], ...]


def load_directory() -> DirectoryData:
    keys = {o.key for o in ORGANIZATIONS}
    rpps = [p.rpps for p in PRACTITIONERS]
    # A mistake here would surface as a confusing search result; fail loudly at start instead.
    if len(set(rpps)) != len(rpps) or not all(luhn_valid(r) for r in rpps):
        raise ValueError("sandbox directory: RPPS must be unique and pass the Luhn check")
    if any(r.org not in keys for p in PRACTITIONERS for r in p.roles):
        raise ValueError("sandbox directory: a practice situation names an unknown organisation")
    return DirectoryData(
        practitioners=tuple(_practitioner(p) for p in PRACTITIONERS),
        roles=tuple(_role(p, n, r) for p in PRACTITIONERS for n, r in enumerate(p.roles, start=1)),
        organizations=tuple(_organization(o) for o in ORGANIZATIONS),
    )


def directory_mailboxes() -> list[str]:
    """Every MSSanté address of the sandbox directory: the sandbox MSSanté operator creates these mailboxes."""
    boxes = [b.address for o in ORGANIZATIONS for b in o.boxes]
    for p in PRACTITIONERS:
        boxes += [b.address for b in p.boxes]
        boxes += [b.address for r in p.roles for b in r.boxes]
    return list(dict.fromkeys(boxes))
