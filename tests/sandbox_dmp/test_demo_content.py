"""The demo patients' DMP holds the ANS example documents, once, with the metadata a producer would send."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.ops.demo import demo_dmp_patients
from opensegur.sandbox.dmp import create_dmp_app
from opensegur.sandbox.dmp.patients import PatientRegistry
from opensegur.sandbox.dmp.seed import DEMO_DOCUMENTS, seed_demo_dmp
from opensegur.security.pki import TestPki

pytestmark = pytest.mark.requirement("DMP-CONSULT-AIR")


def test_each_open_demo_dmp_gets_the_documents_once(tmp_path: Path, pki: TestPki) -> None:
    patients = demo_dmp_patients()
    app = create_dmp_app(tmp_path, pki, patients=PatientRegistry(patients), demo_content=patients)
    store = app.state.dmp.store
    first = store.find_entries(patient_matricule=patients[0].matricule)
    assert len(first) == len(DEMO_DOCUMENTS)
    types = {e.metadata.type_code.code for e in first}
    assert {"11502-2", "18748-4", "11490-0", "87273-9", "11369-6"} <= types
    assert all(e.metadata.patient_id.startswith(patients[0].matricule) for e in first)
    # Years of history: the oldest is about four years old.
    assert min(e.metadata.creation_time or "" for e in first) < "2023"
    assert seed_demo_dmp(store, patients) == 0  # a restart adds nothing
