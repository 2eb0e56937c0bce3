"""Flow: a mail polled from a hospital MSSanté mailbox → patient matched on the CDA's INS → MDM to the DPI → MDN.

Steps, each durable so a crash resumes where it stopped and nothing received is ever lost:
- :func:`poll_mailbox`: every fetched mail is stored (raw payload + ``Mail`` row + ``mss.integrate`` job) and
  committed *before* the mailbox is told it was processed; the idempotence key ``in:<mailbox>:<Message-ID>``
  absorbs the re-read after a crash in between. DSN/MDN reports go to the outbound flow instead.
  :func:`run_poller` keeps one loop per mailbox and, between polls, waits on IMAP IDLE where the reader offers it.
- ``mss.integrate`` (:func:`integrate_mail`): the mail is opened by :mod:`opensegur.transactions.mss_mail` (safe
  against zip bombs, traversal, XXE); the patient is the local *qualified* identity carrying the CDA's INS,
  with identical strict traits. ``X-MSS-INS`` is only a claim, checked against the CDA and never matched on.
  Anything that a machine cannot decide goes to triage with a French reason; anything unsafe or unreadable is
  rejected. The raw mail is kept in both cases.
- ``mss.to_dpi`` (:func:`send_to_dpi`): one MDM per CDA (volet "Transmission au LPS d'un document CDA provenant
  d'un courriel MSSanté"); a DPI outage is retried by the job queue.
- ``mss.results_to_dpi`` (:func:`send_results_to_dpi`, when ``forward_results_oru`` is on): once the DPI took a
  CR de biologie that yielded structured results, they follow as an ORU^R01
  (:mod:`opensegur.transactions.oru_results`); a refusal shows on the document, not on the mail nor its MDN.
- ``mss.mdn`` (:func:`send_mdn`): once every document of the mail has the DPI's answer (or a human rejected the
  mail), the MDN goes back — only when the sender asked for it (``Disposition-Notification-To``, RFC 8098) and,
  when sent automatically, only if that address is the Return-Path (RFC 8098 §2.1, repeated by the volet);
  otherwise it waits for a person's confirmation (:func:`confirm_mdn`).

Volet codes (error-codes.md) reused as MDN codes: 902 unknown patient, 903 no INS in the CDA, 904 INS or traits
not matching a qualified local identity, 905 incomplete INS traits, 906 anything else.

Modules: :mod:`.context` (what the steps share), :mod:`.polling`, :mod:`.integration`, :mod:`.to_dpi`,
:mod:`.mdn`, :mod:`.triage` (what a person decides on a mail in triage: :func:`attach`, :func:`reject`) and
:mod:`.handlers` (the job handlers). The names below are those the server, the pages and the tests use.
"""

from opensegur.flows.mss_inbound.context import InboundError, MailLimits, MssInboundContext
from opensegur.flows.mss_inbound.handlers import (
    make_integrate_handler,
    make_mdn_handler,
    make_results_to_dpi_handler,
    make_to_dpi_handler,
)
from opensegur.flows.mss_inbound.integration import integrate_mail
from opensegur.flows.mss_inbound.mdn import confirm_mdn, send_mdn
from opensegur.flows.mss_inbound.polling import poll_mailbox, run_poller
from opensegur.flows.mss_inbound.to_dpi import send_results_to_dpi, send_to_dpi
from opensegur.flows.mss_inbound.triage import attach, reject

__all__ = [
    "InboundError",
    "MailLimits",
    "MssInboundContext",
    "attach",
    "confirm_mdn",
    "integrate_mail",
    "make_integrate_handler",
    "make_mdn_handler",
    "make_results_to_dpi_handler",
    "make_to_dpi_handler",
    "poll_mailbox",
    "reject",
    "run_poller",
    "send_mdn",
    "send_results_to_dpi",
    "send_to_dpi",
]
