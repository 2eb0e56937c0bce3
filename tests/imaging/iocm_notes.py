"""IOCM Rejection Notes as a PACS sends them (DICOM PS3.3 KOS, document title from CID 7011)."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ImplicitVRLittleEndian

from opensegur.imaging.kos import KOS_SOP_CLASS
from tests.pacs import MR_IMAGE


def rejection_note(
    note_uid: str, study: str, instances: dict[str, list[str]], reason: str = "113001"
) -> Dataset:
    """``instances``: series UID → the SOP Instance UIDs the note withdraws."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(note_uid)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = KOS_SOP_CLASS, note_uid, "KO"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{note_uid}.1"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        reason,
        "DCM",
        "Rejected for Quality Reasons",
    )
    ds.ConceptNameCodeSequence = Sequence([title])
    series_items = []
    for series, sops in instances.items():
        item = Dataset()
        item.SeriesInstanceUID = series
        refs = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = MR_IMAGE, sop
            refs.append(ref)
        item.ReferencedSOPSequence = Sequence(refs)
        series_items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return ds
