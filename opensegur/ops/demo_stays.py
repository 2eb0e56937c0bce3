"""Current stays of demo patients, so that the unit-scoped demo accounts (care relationship) see someone.

In production these come from the GAM's PAM FR movements (``flows.stays``); here a few patients of each site
are admitted into each of its units, with visit numbers of the demo's own range.
"""

from __future__ import annotations

from sqlalchemy import select

from opensegur.store.db import Database
from opensegur.store.models import Patient, Stay, Structure, Unit

PATIENTS_PER_UNIT = 4


def load_demo_stays(db: Database) -> int:
    """Admit the first patients of each demo site into its units, once; returns how many stays were created."""
    created = 0
    with db.session() as s:
        if s.scalar(select(Stay.id).where(Stay.visit_number.like("DEMO-%")).limit(1)) is not None:
            return 0
        for site in s.scalars(select(Structure).where(Structure.kind == "EG").order_by(Structure.id)):
            units = s.scalars(select(Unit).where(Unit.structure_id == site.id).order_by(Unit.code)).all()
            patients = s.scalars(
                select(Patient)
                .where(Patient.structure_id == site.id, Patient.active.is_(True))
                .order_by(Patient.id)
                .limit(PATIENTS_PER_UNIT * len(units))
            ).all()
            for n, patient in enumerate(patients):
                unit = units[n % len(units)]
                s.add(
                    Stay(
                        structure_id=site.id,
                        patient_id=patient.id,
                        visit_number=f"DEMO-{site.id}-{n + 1:04d}",
                        patient_class="I",
                        unit_code=unit.code,
                        cancelled=False,
                    )
                )
                created += 1
    return created
