"""Every kind of job the workers run, and the factory that builds its handler — the one place to read what the
platform does in the background (as pynetdicom's ``events.py`` lists every event with its handlers).

A job is queued in the transaction of the step before it (``store.jobs.enqueue``) and its kind is stored with it,
so a value here never changes once released. The kinds a person or a peer waits on (``PROMPT_KINDS``) are queued
in the prompt lane (``store.jobs.Lane``), claimed before the bulk. The server builds each handler from its
factory when the component it needs is configured (a DMP, a mailbox, a PACS…); ``tests/flows/test_jobs.py``
checks that the table and the factories agree, that a fully configured platform handles every kind, and that
the prompt kinds are queued in their lane.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = ["GIVEN_UP", "HANDLER_FACTORIES", "PROMPT_KINDS", "JobKind"]


class JobKind(StrEnum):
    # Identity
    INSI_SEARCH = "insi.search"  # INSi search by traits for an identity to qualify
    # Documents: from intake to the DMP, and the business acknowledgement
    PROCESS = "document.process"  # validate, build the metadata, plan the deliveries
    DELIVER = "dmp.deliver"  # one delivery to the DMP (ITI-41, ITI-57)
    ZAM = "zam.send"  # the ZAM business acknowledgement to the DPI
    DMP_PREFETCH = "dmp.prefetch"  # a patient's DMP list read ahead of the consultation
    # MSSanté, outbound
    MSS_SEND = "mss.send"  # one mail to a professional's or the patient's mailbox
    MSS_APPOINTMENT = "mss.appointment"  # an appointment notice to the patient
    MSS_ZAM = "mss.zam"  # the MSSanté delivery's acknowledgement to the DPI
    # MSSanté, inbound
    MSS_INTEGRATE = "mss.integrate"  # a received mail read, matched to a patient, its documents kept
    MSS_TO_DPI = "mss.to_dpi"  # a received document sent on to the DPI (MDM)
    MSS_MDN = "mss.mdn"  # the read or processing receipt to the sender
    MSS_RESULTS_TO_DPI = "mss.results_to_dpi"  # a received laboratory report's results to the DPI (ORU)
    # Imaging (DRIMbox)
    DRIMBOX_PUBLISH = "drimbox.publish"  # the KOS manifest of a report's exam published, or replaced
    DRIMBOX_WITHDRAW = "drimbox.withdraw"  # a deleted report's manifests withdrawn from the DMP
    DRIMBOX_IMPORT = "drimbox.import"  # a retrieved exam stored into the site's PACS


# A DPI waits for its ZAM, a sender for its MDN, a doctor for the DMP list read ahead of the consultation.
PROMPT_KINDS = frozenset({JobKind.ZAM, JobKind.MSS_ZAM, JobKind.MSS_MDN, JobKind.DMP_PREFETCH})

# "module:function" rather than the functions: the flows import JobKind, so importing them here would be a cycle.
HANDLER_FACTORIES: Mapping[JobKind, str] = MappingProxyType(
    {
        JobKind.INSI_SEARCH: "opensegur.flows.qualification:make_insi_job_handler",
        JobKind.PROCESS: "opensegur.flows.dmp_feed:make_process_handler",
        JobKind.DELIVER: "opensegur.flows.dmp_feed:make_deliver_handler",
        JobKind.ZAM: "opensegur.flows.dmp_feed:make_zam_handler",
        JobKind.DMP_PREFETCH: "opensegur.flows.dmp_prefetch:make_prefetch_handler",
        JobKind.MSS_SEND: "opensegur.flows.mss_outbound.handlers:make_mss_send_handler",
        JobKind.MSS_APPOINTMENT: "opensegur.flows.mss_outbound.handlers:make_appointment_handler",
        JobKind.MSS_ZAM: "opensegur.flows.mss_outbound.handlers:make_mss_zam_handler",
        JobKind.MSS_INTEGRATE: "opensegur.flows.mss_inbound.handlers:make_integrate_handler",
        JobKind.MSS_TO_DPI: "opensegur.flows.mss_inbound.handlers:make_to_dpi_handler",
        JobKind.MSS_MDN: "opensegur.flows.mss_inbound.handlers:make_mdn_handler",
        JobKind.MSS_RESULTS_TO_DPI: "opensegur.flows.mss_inbound.handlers:make_results_to_dpi_handler",
        JobKind.DRIMBOX_PUBLISH: "opensegur.flows.drimbox_source:make_handlers",
        JobKind.DRIMBOX_WITHDRAW: "opensegur.flows.drimbox_source:make_handlers",
        JobKind.DRIMBOX_IMPORT: "opensegur.flows.drimbox_import:make_import_handler",
    }
)

# What a kind does when its job is given up (in the dead letters, its attempts or outage time spent), in that same
# transaction: the delivery it was bringing forward stops saying a new try is planned (``flows.worker.GivenUp``).
GIVEN_UP: Mapping[JobKind, str] = MappingProxyType(
    {
        JobKind.DELIVER: "opensegur.flows.dmp_feed:delivery_given_up",
        JobKind.MSS_SEND: "opensegur.flows.mss_outbound.sending:mail_given_up",
    }
)
