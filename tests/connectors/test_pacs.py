"""The PACS connector against a real PACS (Orthanc): C-ECHO, an exam's instances level by level, refusals."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from opensegur.connectors.pacs import PacsClient, storage_contexts
from opensegur.flows.drimbox_ports import PacsUnavailable
from opensegur.imaging.study import study_from_matches
from opensegur.imaging.wado import AS_STORED
from tests.pacs import mr_image, orthanc

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")

STUDY = "1.2.250.1.213.4.5.2.1.102"  # the ANS RIS examples' exam


def test_the_exam_of_a_report_is_found_series_by_series(tmp_path: Path) -> None:
    with orthanc(tmp_path) as pacs:
        client = PacsClient(pacs.endpoint)
        client.echo()
        images = [
            mr_image(
                study=STUDY,
                series=f"1.2.250.1.999.5.{s}",
                sop=f"1.2.250.1.999.6.{s}{i}",
                patient_id="000003",
                accession="ACN102",
                series_number=s,
                instance_number=i,
            )
            for s in (1, 2)
            for i in (1, 2, 3)
        ]
        other = mr_image(
            study="1.2.250.1.999.9",
            series="1.2.250.1.999.9.1",
            sop="1.2.250.1.999.9.1.1",
            patient_id="000004",
            accession="ACN999",
        )
        pacs.store(*images, other)
        study = study_from_matches(client.find_instances(STUDY))
        assert study.accession_number == "ACN102" and study.patient_id == "000003"
        assert [s.series_number for s in study.series] == [1, 2] and study.instance_count == 6
        assert (
            study.modalities == ["MR"]
            and study.series[0].instances[0].sop_instance_uid == "1.2.250.1.999.6.11"
        )
        assert study.description == "IRM du genou" and study.series[1].description == "Série 2"
        assert client.find_instances("1.2.250.1.999.404") == []


def test_an_ae_title_the_pacs_does_not_know_is_refused(tmp_path: Path) -> None:
    with orthanc(tmp_path) as pacs:
        stranger = PacsClient(replace(pacs.endpoint, calling_aet="INTRUS"))
        with pytest.raises(PacsUnavailable, match="INTRUS est-il déclaré|association refusée"):
            stranger.echo()
        down = PacsClient(replace(pacs.endpoint, port=1, timeout_s=2))
        with pytest.raises(PacsUnavailable):
            down.find_instances(STUDY)


def test_a_series_is_retrieved_instance_by_instance_in_an_offered_transfer_syntax(tmp_path: Path) -> None:
    with orthanc(tmp_path) as pacs:
        series = "1.2.250.1.999.5.1"
        pacs.store(
            *(
                mr_image(
                    study=STUDY,
                    series=series,
                    sop=f"{series}.{i}",
                    patient_id="000003",
                    accession="ACN102",
                    instance_number=i,
                )
                for i in range(1, 6)
            )
        )
        client = PacsClient(pacs.endpoint)
        got = list(client.retrieve_series(STUDY, series, [ExplicitVRLittleEndian]))
        assert len(got) == 5 and {g.transfer_syntax for g in got} == {ExplicitVRLittleEndian}
        read = [pydicom.dcmread(io.BytesIO(g.data)) for g in got]
        assert sorted(str(r.SOPInstanceUID) for r in read) == [f"{series}.{i}" for i in range(1, 6)]
        assert list(client.retrieve_series(STUDY, "1.2.250.1.999.404", [ExplicitVRLittleEndian])) == []
        # A reader that stops after one instance ends the retrieval; the next one is whole.
        partial = client.retrieve_series(STUDY, series, [ExplicitVRLittleEndian])
        assert next(partial).data[128:132] == b"DICM"
        partial.close()
        assert len(list(client.retrieve_series(STUDY, series, [ImplicitVRLittleEndian]))) == 5


def test_as_stored_gives_each_transfer_syntax_a_context_so_the_pacs_need_not_transcode() -> None:
    mr = "1.2.840.10008.5.1.4.1.1.4"
    contexts = storage_contexts([mr], [AS_STORED])
    assert all(len(syntaxes) == 1 for _cls, syntaxes in contexts) and len(contexts) > 10
    assert (mr, ["1.2.840.10008.1.2.4.50"]) in contexts and (mr, [ExplicitVRLittleEndian]) in contexts
    # A named syntax keeps its rank; too many classes for one context per syntax share one each.
    named = storage_contexts([mr], [ImplicitVRLittleEndian, AS_STORED])
    assert named[0] == (mr, [ImplicitVRLittleEndian])
    classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(20)]
    shared = storage_contexts(classes, [AS_STORED])
    assert len(shared) == 20 and all(len(syntaxes) > 10 for _cls, syntaxes in shared)
    assert storage_contexts([mr], [ExplicitVRLittleEndian]) == [(mr, [ExplicitVRLittleEndian])]
