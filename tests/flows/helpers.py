"""Builders shared by the flow tests: a GHT with the ANS examples' authority, HL7 messages."""

from __future__ import annotations

from sqlalchemy import select

from opensegur.ops.demo import load_demo
from opensegur.store.db import Database
from opensegur.store.models import Patient, PatientIdentifier


def with_demo(db: Database) -> Database:
    load_demo(db)
    return db


def hl7(*segments: str) -> bytes:
    return "\r".join(segments).encode("utf-8") + b"\r"


MSH = (
    "MSH|^~\\&|GAM|CHU-X|OPENSEGUR|CHU-X|20240306111154||ADT^{trigger}^ADT_{structure}|{cid}|P|2.5^FRA^2.11"
    "|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM"
)


def msh(trigger: str, cid: str, structure: str | None = None) -> str:
    return MSH.format(trigger=trigger, cid=cid, structure=structure or trigger)


def pid(
    ipp: str = "123456",
    *,
    name: str = "VERLAINE",
    first: str = "JEANNE",
    firsts: str | None = None,
    birth: str = "19610409",
    sex: str = "F",
    cog: str = "59350",
    ins: str | None = None,
    oid: str = "1.2.250.1.213.1.4.10",
    status: str = "PROV",
) -> str:
    ids = f"{ipp}^^^CHU-X&000897406&N^PI"
    if ins:
        ids += f"~{ins}^^^ASIP-SANTE-INS-NIR&{oid}&ISO^INS"
    return (
        f"PID|1||{ids}||{name}^{first}^{firsts or first}^^^^L||{birth}|{sex}|||"
        f"^^^^^^BDL^^{cog}" + "|" * 21 + status
    )


def patient_by_ipp(db: Database, ipp: str) -> Patient | None:
    with db.session() as s:
        ident = s.scalar(select(PatientIdentifier).where(PatientIdentifier.value == ipp))
        if ident is None:
            return None
        p = ident.patient
        s.expunge(p)
        return p
