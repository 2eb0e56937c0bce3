"""Flow: documents and appointments from the DPI → MSSanté mails to professionals and patients → DSN/MDN → ZAM.

Steps, each a job so a crash resumes where it stopped:
- planning (inside ``document.process``, see ``dmp_feed._plan_deliveries``): one ``Delivery`` per MSSanté destination
  requested by MetaDMPMSS (``MSSANTE_PS``: the PRT RCT addresses; ``MSSANTE_PAT``: ``<matricule>@patient.mssante.fr``)
  and its outgoing ``Mail`` row (key ``out:<delivery id>``), without waiting for the DMP. The patient address needs
  a qualified INS: planning happens only behind the identity gate, so a document of an unqualified patient waits for
  the identity like its DMP delivery (mss_mail.patient_mailbox; the volet sends the patient nothing else);
- ``mss.send``: the XDM package (with the XDS metadata already computed for the DMP) and the mail are built once,
  stored, marked ``sending`` and committed *before* the SMTP transaction; a replacement waits for the mail of the
  document it replaces (same destination), as in the DMP flow;
- :func:`record_report`, called by the inbound poller for every ``multipart/report``: a DSN gives ``ZAM^Z02``
  (ACK_RECEPTION_MSS), an MDN ``ZAM^Z03`` (ACK_LECTURE_MSS) — profils-messages.md, "Evènements déclenchants des
  messages d'accusés métier";
- ``mss.zam``: the ZAM to the DPI (one per recipient: OBX DESTINATAIRE_MSS / LECTEUR_MSS carries one address);
- appointments (MSSanté citoyenne): ``accept_appointment`` (SIU from the DPI) or :func:`schedule_appointment`
  (REST) store an outgoing ``Mail``; ``mss.appointment`` sends it to the patient's Mon espace santé address.

At most one mail per delivery: a job that finds its mail ``sending`` was interrupted during or right after the SMTP
transaction. The mail may have left, so it is never sent again automatically: the delivery fails with
``MSS_UNCERTAIN`` and a professional decides (``dmp_feed.retry`` puts it back, and only then is it re-sent, with
the same Message-ID).

Acknowledgements: a successful Z02/Z03 is sent only when the DPI asked for it (ACK_RECEPTION / ACK_LECTURE_MSS);
a failure is always reported, since the DPI would otherwise believe the document delivered. A document that is
also for the DMP keeps the DMP's status in the flow view; the MSSanté deliveries show their own.

Modules, one step each: ``common`` (settings, refusals, destinations, addresses), ``tracking`` (a mail's and its
delivery's state, and the jobs a change queues), ``sending`` (one SMTP transaction and its outcome), ``planning``,
``document_mail`` (``mss.send``), ``reports`` (DSN/MDN, ``mss.zam``), ``appointments`` (``mss.appointment``) and
``handlers`` (the job handlers ``jobs.HANDLER_FACTORIES`` names).
"""

from __future__ import annotations

from opensegur.flows.mss_outbound.appointments import (
    AcceptedAppointment,
    accept_appointment,
    schedule_appointment,
    send_appointment_mail,
)
from opensegur.flows.mss_outbound.common import DEST_PATIENT, DEST_PS, MssOutboundConfig, MssOutboundError
from opensegur.flows.mss_outbound.document_mail import send_document_mail
from opensegur.flows.mss_outbound.handlers import (
    make_appointment_handler,
    make_mss_send_handler,
    make_mss_zam_handler,
)
from opensegur.flows.mss_outbound.planning import plan_mss_deliveries, request_document_send
from opensegur.flows.mss_outbound.reports import record_report, send_mss_zam
from opensegur.flows.mss_outbound.sending import mail_given_up

__all__ = [
    "DEST_PATIENT",
    "DEST_PS",
    "AcceptedAppointment",
    "MssOutboundConfig",
    "MssOutboundError",
    "accept_appointment",
    "mail_given_up",
    "make_appointment_handler",
    "make_mss_send_handler",
    "make_mss_zam_handler",
    "plan_mss_deliveries",
    "record_report",
    "request_document_send",
    "schedule_appointment",
    "send_appointment_mail",
    "send_document_mail",
    "send_mss_zam",
]
