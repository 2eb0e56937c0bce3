"""The ANS's DRIMbox référencement exams (`DRIM-M_DATA`, « Référencement DRIMBox/Jeux de données »), end to end
between two sites sharing the sandbox DMP: each exam's MDM from the RIS → its report in the DMP → its KOS
manifest published by site A's DRIMbox → found by site B's consumer and every instance retrieved with the pixel
data of site A's PACS; the update exam (G1 then G1_MAJ) replaces its manifest, the depublication exam (I then
I_Depublication) withdraws it.

What is the ANS's (`tests/samples/ans-drim-m/referencement/`, SOURCE.md): each exam's MDM as published, and its
CDA file. The copy of the CDA each MDM embeds is the same report with its organisation and birthplace changed in
some exams and its accents encoded twice in others (⚠ an ANS inconsistency, see EXAMS_*.md): the CDA file is
the one sent. Both embed the same 220 KB PDF, kept out of the repository (`@@PDF@@`): a one-page PDF is made
here. The messages' `{{…}}` template fields are filled as the ANS's test tool would.

What is made here: the images. The ANS's (8,856 DICOM files) are binary, in a repository over the size this
project can fetch; each exam gets, per series folder the ANS gives it, two 8×8 images with its Study Instance
UID, accession number, patient and modality. The exams the ANS gives no images (E, F, N, W, Z) and G2 (whose
study is the placeholder 1.2.3.4.5.6.7.8.9) reach the DMP with no manifest: their publication waits for the PACS.
I has no images either; it gets some here, else its depublication would have no manifest to withdraw.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pypdf import PdfWriter
from sqlalchemy import select

from opensegur.flows.drimbox_cache import FetchStatus
from opensegur.flows.drimbox_consumer import DrimboxConsumer, ImagingSearch, find_exams
from opensegur.hospital.sites import resolve_site
from opensegur.imaging.report import read_imaging_report
from opensegur.server import Runtime
from opensegur.store.models import ImagingManifest
from tests.dmp import helpers
from tests.dmp.drimbox_sites import DOCTOR, consumer_settings, drimbox_site, local_patient, retrieved
from tests.dmp.helpers import INS, entries_for, running_platform, send_raw, wait_for
from tests.pacs import mr_image
from tests.psc_tokens import psc_access_token

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")
schematron_cache = helpers.schematron_cache

REFERENCEMENT = Path(__file__).parents[1] / "samples" / "ans-drim-m" / "referencement"
# Series folders under « Images DICOM/Examen X » in the ANS's data set; I's are made up (above).
SERIES = {
    "C": 1,
    "G1": 1,
    "H": 5,
    "I": 1,
    "J": 1,
    "K": 1,
    "L": 1,
    "M": 1,
    "Q": 1,
    "R": 2,
    "S": 1,
    "U": 1,
    "V": 1,
    "X": 2,
    "Y": 1,
}
WITHOUT_IMAGES = ("E", "F", "G2", "N", "W", "Z")
# The reports F and Q name their modality « RM », the French abbreviation; DICOM's is MR, what a PACS holds.
_DICOM_MODALITY = {"RM": "MR"}


def _pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PDF_B64 = base64.b64encode(_pdf())


def cda(name: str) -> bytes:
    return (REFERENCEMENT / f"CR_{name}.xml").read_bytes().replace(b"@@PDF@@", PDF_B64)


def message(name: str, control_id: str) -> bytes:
    """The exam's message with its CDA, its template fields filled: the MDM, or for C the ORU^R01 (the ANS gives
    both; a RIS sends one or the other)."""
    raw = (REFERENCEMENT / f"CR_{name}-{'ORU' if name == 'C' else 'MDM'}.hl7").read_bytes()
    for field, value in {
        b"{{applicationSupplier}}": b"RIS-Y",
        b"{{facilitySupplier}}": b"Organisation-Y",  # the demo site's RIS, as sites.toml declares it
        b"{{applicationReceiver}}": b"OPENSEGUR",
        b"{{facilityReceiver}}": b"CHU-DEMO",
        b"{{idMessage}}": control_id.encode(),
    }.items():
        raw = raw.replace(field, value)
    cda_name = name.removesuffix("_Depublication")
    return raw.replace(b"@@CDA@@", base64.b64encode(cda(cda_name)))


@dataclass(frozen=True)
class Exam:
    name: str
    study: str
    accession: str
    modality: str
    document: str

    def images(self) -> list[Dataset]:
        return [
            mr_image(
                study=self.study,
                series=f"{self.study}.{s}",
                sop=f"{self.study}.{s}.{i}",
                patient_id=INS,
                accession=self.accession,
                series_number=s,
                instance_number=i,
                modality=self.modality,
            )
            for s in range(1, SERIES[self.name] + 1)
            for i in (1, 2)
        ]


def exam_of(name: str) -> Exam:
    report = read_imaging_report(cda(name))
    assert report.accession is not None and report.accession.extension
    modality = report.modalities[0].code
    return Exam(
        name,
        report.study_instance_uid,
        report.accession.extension,
        _DICOM_MODALITY.get(modality, modality),
        report.header.id.root,
    )


def _declare_ans_facilities(rt: Runtime) -> None:
    """The MDMs of J, K, L and S name the ANS's test tool as sending facility: the site declares it, as a hospital
    declares its RIS's MSH-4 (``facility_aliases``)."""
    with rt.db.session() as s:
        site = resolve_site(s, ["Organisation-Y"])
        assert site is not None
        aliases = site.settings["facility_aliases"] + ["ANS_HL7v2_Facility_A", "ANS_HL7v2_Facility_B"]
        site.settings = {**site.settings, "facility_aliases": aliases}


def _manifest_status(rt: Runtime, study: str) -> list[str]:
    with rt.db.session() as s:
        return list(
            s.scalars(
                select(ImagingManifest.status)
                .where(ImagingManifest.study_instance_uid == study)
                .order_by(ImagingManifest.id)
            )
        )


async def _send(rt: Runtime, name: str, number: int) -> None:
    sent = await send_raw(rt, message(name, f"REF{number}"), cid=f"REF{number}")
    assert sent.code == "AA", (name, sent.ack)


async def _retrieve_all(consumer: DrimboxConsumer, b: Runtime, a: Runtime, exams: dict[str, Exam]) -> None:
    dmp = b.dmp_consult
    assert dmp is not None
    patient = local_patient(b)
    found = {e.study_instance_uid: e for e in await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch())}
    published = {e.study: e for e in exams.values()}
    assert found.keys() == published.keys()
    token = await psc_access_token(a.endpoints["psc"])
    for study, exam in published.items():
        entry = found[study]
        assert entry.accession == exam.accession and [m.code for m in entry.modalities] == [exam.modality]
        done = await retrieved(consumer, await consumer.start(DOCTOR, patient, entry.entry, token, "dr.test"))
        assert done.status == FetchStatus.COMPLETE, (exam.name, done.error)
        received = {
            str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, consumer.cache.instances(entry.kos))
        }
        originals = {str(d.SOPInstanceUID): d for d in exam.images()}
        assert received.keys() == originals.keys(), exam.name
        for sop, original in originals.items():
            assert received[sop].PixelData == original.PixelData, (exam.name, sop)
            assert received[sop].file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


async def test_every_referencement_exam_from_the_ris_to_the_other_sites_consumer(
    tmp_path: Path, schematron_cache: Path
) -> None:
    with_images = {name: exam_of(name) for name in SERIES}
    images = [ds for exam in with_images.values() for ds in exam.images()]
    async with drimbox_site(tmp_path / "a", schematron_cache, more=images) as (a, _pacs):
        _declare_ans_facilities(a)
        number = 0
        for name, exam in with_images.items():
            number += 1
            await _send(a, name, number)

            async def published(study: str = exam.study) -> bool:
                return _manifest_status(a, study) == ["published"]

            await wait_for(published)
            assert await entries_for(a, exam.document), f"{name}: the report is not in the DMP"

        # The update exam: G1_MAJ (MDM^T10, RPLC of G1's report) replaces the exam's manifest.
        number += 1
        await _send(a, "G1_MAJ", number)
        g1 = with_images["G1"]

        async def replaced() -> bool:
            return _manifest_status(a, g1.study) == ["replaced", "published"]

        await wait_for(replaced)
        # The depublication exam: I_Depublication (MDM^T04, ORC CA) takes I's report, then its manifest, away.
        number += 1
        await _send(a, "I_Depublication", number)
        depublished = with_images.pop("I")

        async def withdrawn() -> bool:
            return _manifest_status(a, depublished.study) == ["withdrawn"]

        await wait_for(withdrawn)

        # The exams without images: the report in the DMP, no manifest while the PACS has nothing.
        for name in WITHOUT_IMAGES:
            number += 1
            await _send(a, name, number)
            exam = exam_of(name)

            async def in_dmp(document: str = exam.document) -> bool:
                return bool(await entries_for(a, document))

            await wait_for(in_dmp)
            assert _manifest_status(a, exam.study) == [], name

        async with running_platform(tmp_path / "b", schematron_cache, **consumer_settings(a)) as (b, _dpi):
            consumer = b.drimbox_consumer
            assert consumer is not None
            await _retrieve_all(consumer, b, a, with_images)
