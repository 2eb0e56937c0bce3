"""What every step of the outbound MSSanté flow shares: the settings the mails need, the refusal the flow raises,
the two destinations, the uncertain-send code, and how an address or an SMTP reply is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr

from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError
from opensegur.store.models import Structure

DEST_PS = "MSSANTE_PS"
DEST_PATIENT = "MSSANTE_PAT"
DEST_FLAGS = ((DEST_PS, "dest_mssante_ps"), (DEST_PATIENT, "dest_mssante_pat"))
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)\b")
UNCERTAIN = "MSS_UNCERTAIN"
UNCERTAIN_TEXT = (
    "Envoi interrompu pendant l'échange avec le serveur de messagerie : le courriel est peut-être parti. "
    "Vérifier auprès du destinataire avant de relancer l'envoi."
)


@dataclass(frozen=True)
class MssOutboundConfig:
    """What the mails need from the settings; a site may name its own mailbox (``settings["mssante_sender"]``)."""

    sender: str  # the hospital's applicative mailbox (mapping-mss.md: FROM = BAL applicative)
    nil: str  # X-MSS-NIL, the product reference given by the Convergence platform
    source_oid: str  # sourceId of the XDM submission sets (the platform's OID arc)
    product: str = "OpenSégur"
    vendor: str = "Projet OpenSégur (logiciel libre)"


class MssOutboundError(OpenSegurError):
    """A request the flow refuses. ``code`` is stable for programs, ``message_fr`` is shown to the user."""

    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


def norm(address: str) -> str:
    return parseaddr(address)[1].strip().lower()


def smtp_code(text: str | None, default: str) -> str:
    match = _SMTP_CODE.match(text or "")
    return match.group(1) if match else default


def sender_for(s: Session, cfg: MssOutboundConfig, structure_id: int | None) -> str:
    site = s.get(Structure, structure_id) if structure_id else None
    return str((site.settings or {}).get("mssante_sender") or cfg.sender) if site else cfg.sender
