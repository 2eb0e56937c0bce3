"""The demo exam of another hospital, brought into a platform's image cache from the sandbox's remote DRIMbox."""

from __future__ import annotations

from sqlalchemy import select

from opensegur.flows.dmp_consult import patient_cx
from opensegur.flows.drimbox_cache import FetchStatus, FetchView
from opensegur.flows.drimbox_consumer import Exam, ImagingSearch, PatientRef, find_exams
from opensegur.server import Runtime
from opensegur.store.models import Patient
from tests.dmp.helpers import wait_for
from tests.dmp.test_drimbox_consumer_e2e import DOCTOR
from tests.psc_tokens import psc_access_token

DE_LA_TOUR = "218089913400712"  # a demo patient with a DMP


def demo_patient(rt: Runtime) -> PatientRef:
    with rt.db.session() as s:
        p = s.scalars(select(Patient).where(Patient.ins_matricule == DE_LA_TOUR)).first()
        assert p is not None and p.ins_oid
        return PatientRef(p.id, DE_LA_TOUR, patient_cx(DE_LA_TOUR, p.ins_oid))


async def retrieve_demo_exam(rt: Runtime) -> tuple[Exam, FetchView, str]:
    """The demo CT, found in the DMP and retrieved whole; the exam, its retrieval and the PSC token used."""
    assert rt.dmp_consult is not None and rt.drimbox_consumer is not None
    consumer = rt.drimbox_consumer
    patient = demo_patient(rt)
    [exam] = await find_exams(rt.dmp_consult, DOCTOR, patient.cx, ImagingSearch(modality="CT"))
    token = await psc_access_token(rt.endpoints["psc"])
    view = await consumer.start(DOCTOR, patient, exam.entry, token, "dr.test")

    async def ended() -> bool:
        now = consumer.cache.get(view.id)
        return now is not None and now.status != FetchStatus.FETCHING

    await wait_for(ended)
    done = consumer.cache.get(view.id)
    assert done is not None and done.status == FetchStatus.COMPLETE, done
    return exam, done, token
