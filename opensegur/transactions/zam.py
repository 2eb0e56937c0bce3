"""Business acknowledgements ZAM (HL7 v2.6, structure ZAM_Z01) of the ANS volet "Transmission de document(s)
CDA en HL7v2" v2.1, sent by the GESTIONNAIRE (PFI) back to the CREATEUR (DPI/RIS/SIL).

Layout (profils-messages.md "Description des messages HL7 d'accusés métier", and the ANS example messages
"Message metier reception DMP / reception MSS / lecture MSS"):

    MSH|^~\\&|<PFI>|<PFI facility>|<orig MSH-3>|<orig MSH-4>|<now>||ZAM^Z0n^ZAM_Z01|<id>|P|2.6|||||FRA
        |<charset>|||2.1^CISIS_CDA_HL7_V2
    EVN||<status time>
    OBX|1|CWE|<ACK code>^<label>^AckMetierZAM|<orig MSH-10>|Y|N^^expandedYes-NoIndicator||||||F|
    OBX|2|XTN|DESTINATAIRE_MSS|LECTEUR_MSS^<label>^AckMetierZAM|<recipient id>|^^X.400^<address>||||||F|
    ERR|||207^Application internal error^messageErrorCondition|<severity>|<code>^<label>^<system>

- Z01 = DMP reception (ACK_RECEPTION_DMP, no second OBX), Z02 = MSSanté reception (ACK_RECEPTION_MSS +
  DESTINATAIRE_MSS), Z03 = MSSanté read/processing (ACK_LECTURE_MSS + LECTEUR_MSS). There is no "ZAM"
  segment: the message type is ZAM, its body is EVN + OBX + ERR.
- OBX-4 of the first OBX is the control id (MSH-10) of the ORU/MDM that carried the document: the volet
  identifies the request, not the document.
- ERR is [0..1], required when OBX-5 = N. ERR-5 code systems: DMP error codes of the "Service DMP intégré
  aux LPS" annex A7-1 (not in the volet; the profile names the system DMP_ERROR_CODE, the example
  DMPERRORCODE: we follow the profile), SMTPERRORCODE for Z02, applicationErrorCondition for Z03.
- ERR-3 label: "Application internal error" (HL7 table 0357 and the ANS example; the profile table says
  "Application error").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from opensegur.transactions.cda_hl7v2 import DocumentMessage
from opensegur.transactions.hl7v2 import (
    Hl7Error,
    MessageHeader,
    charset_to_codec,
    escape_text,
    format_dtm,
    parse,
)
from opensegur.transactions.hl7v2_message import get_field, segments

__all__ = [
    "APPLICATION_ERROR_CODES",
    "SMTP_ERROR_CODES",
    "VOLET_ERROR_CODES",
    "ZAM_EVENTS",
    "ZamError",
    "ZamKind",
    "ZamMessage",
    "ZamStatus",
    "build_zam",
    "parse_zam",
]

ZamKind = Literal["reception_dmp", "reception_mss", "lecture_mss"]

# kind -> (trigger, first OBX code, its label, second OBX code or None, its label, default ERR-5 system)
ZAM_EVENTS: dict[ZamKind, tuple[str, str, str, str | None, str, str]] = {
    "reception_dmp": ("Z01", "ACK_RECEPTION_DMP", "Accusé de réception DMP", None, "", "DMP_ERROR_CODE"),
    "reception_mss": (
        "Z02",
        "ACK_RECEPTION_MSS",
        "Accusé de réception MSSanté",
        "DESTINATAIRE_MSS",
        "Destinataire MSSanté",
        "SMTPERRORCODE",
    ),
    "lecture_mss": (
        "Z03",
        "ACK_LECTURE_MSS",
        "Accusé de lecture",
        "LECTEUR_MSS",
        "Lecteur du courriel MSSanté",
        "applicationErrorCondition",
    ),
}
_KIND_BY_TRIGGER: dict[str, ZamKind] = {event[0]: kind for kind, event in ZAM_EVENTS.items()}

# error-codes.md, "user-defined applicationErrorCondition" (ERR-5 of Z03 and of the consumer's ACK).
APPLICATION_ERROR_CODES: dict[str, str] = {
    "900": "Version du document incorrecte lors d'une demande de remplacement/suppression",
    "901": "Auteur non autorisé à remplacer ou supprimer un document",
    "902": "Identifiant patient inconnu",
    "903": "INS non présent dans le document",
    "904": "L'INS transmis ne correspond pas exactement à celui stocké dans la base du consommateur",
    "905": "L'INS transmis n'est pas complet",
    "906": "Erreur 'Autre'",
}
VOLET_ERROR_CODES = APPLICATION_ERROR_CODES

# error-codes.md, table "SMTPERRORCODE" (ERR-5 of Z02).
SMTP_ERROR_CODES: dict[str, str] = {
    "101": "Le serveur n'arrive pas à se connecter.",
    "111": "Connexion refusée ou impossibilité d'ouvrir un flux SMTP.",
    "251": "Le compte du destinataire n'est pas sur le serveur actuel. L'envoi sera donc relayé à un autre serveur.",
    "252": "Le serveur ne peut pas vérifier l'utilisateur. Il confirme cependant qu'il essaiera de transmettre le "
    "message malgré tout",
    "420": "« Problème de connexion de temporisation » : il y a eu des problèmes pendant le transfert du message.",
    "421": "Le service est indisponible en raison d'un problème de connexion.",
    "422": "La boîte aux lettres du destinataire a dépassé sa limite de stockage.",
    "431": "Espace insuffisant sur le disque, ou état de mémoire insuffisante en raison d'une surcharge de fichiers.",
    "432": "Mot de passe de transition nécessaire",
    "441": "Le serveur du destinataire ne répond pas",
    "442": "La connexion a été interrompue pendant la transmission",
    "450": "Action non effectuée : boîte-aux-lettres non disponible [Ex., bloquée par un autre utilisateur]",
    "451": "Action arrêtée : erreur de traitement",
    "452": "Action non effectuée : manque de ressources système.",
    "500": "Erreur de syntaxe, commande non reconnue [y compris des erreurs de type « ligne de commande trop longue »]",
    "501": "Erreur de syntaxe dans des paramètres ou arguments de commande",
    "502": "Commande non implémentée",
    "503": "Mauvaise séquence de commandes",
    "504": "Paramètre de commande non implémenté",
    "510": "Mauvaise adresse courriel",
    "512": "Ce code indique une erreur DNS. Le serveur hôte du nom de domaine du destinataire est introuvable.",
    "513": "Le type d'adresse est incorrect. Souvent un problème lié à une faute d'orthographe. Dans de rares cas, "
    "il peut être lié à un problème d'authentification.",
    "523": "La taille totale de votre mailing dépasse les limites du serveur destinataire.",
    "530": "L'authentification est requise. Vous devez authentifier votre compte de messagerie avant d'envoyer un "
    "e-mail",
    "541": "L'adresse du destinataire a rejeté votre message. Dans la plupart des cas, c'est une erreur causée par "
    "un filtre anti-spam.",
    "550": "Action non effectuée : boîte aux lettres non disponible (ex. : boîte-aux-lettres non trouvée, pas "
    "d'accès).",
    "551": "Un relais peut être interrompu car votre adresse et celle du destinataire ne sont pas hébergées "
    "localement par le serveur.",
    "552": "Action abandonnée - Allocation de stockage dépassée. La boîte aux lettres du destinataire a dépassé ses "
    "limites.",
    "553": "La commande a été abandonnée car le nom de la boîte aux lettres n'est pas valide.",
    "554": "Cela signifie que l'envoi a échoué. Ce code indique une erreur permanente et le serveur n'essaiera pas "
    "d'envoyer le message à nouveau.",
}

PROFILE = "2.1^CISIS_CDA_HL7_V2"
ALLOWED_CHARSETS = ("UNICODE UTF-8", "8859/15")  # MSH-18 values allowed by the volet
ERR3 = "207^Application internal error^messageErrorCondition"
SEVERITIES = frozenset({"E", "F", "I", "W"})  # HL7 table 0516


@dataclass(frozen=True)
class ZamError:
    code: str  # ERR-5.1
    label: str = ""  # ERR-5.2; filled from the volet tables when empty and known
    system: str = ""  # ERR-5.3; the kind's default when empty
    severity: str = "E"  # ERR-4


@dataclass
class ZamStatus:
    kind: ZamKind
    success: bool  # OBX-1 OBX-5.1 Y/N
    timestamp: datetime  # EVN-2: when the DMP/MSSanté answer was received
    original_control_id: str = ""  # OBX-1 OBX-4; taken from the original message when empty
    recipient_address: str | None = None  # OBX-2 XTN.4 (Z02 recipient, Z03 reader); required for Z02/Z03
    recipient_id: str | None = None  # OBX-2 OBX-4 (optional)
    errors: list[ZamError] = field(default_factory=list)


@dataclass
class ZamMessage:
    header: MessageHeader
    status: ZamStatus


def _validate(status: ZamStatus) -> None:
    _, _, _, second, _, _ = ZAM_EVENTS[status.kind]
    if len(status.errors) > 1:
        raise ValueError("the volet allows one ERR segment at most in a ZAM")
    if not status.success and not status.errors:
        raise ValueError("ERR is required when the acknowledgement status is N")
    if second and not status.recipient_address:
        raise ValueError(f"{second} requires the recipient/reader MSSanté address")
    for error in status.errors:
        if error.severity not in SEVERITIES:
            raise ValueError(f"unknown ERR-4 severity {error.severity!r}")


def build_zam(
    original: DocumentMessage | MessageHeader,
    status: ZamStatus,
    *,
    control_id: str,
    now: datetime,
    app: str = "OPENSEGUR",
    facility: str = "OPENSEGUR",
) -> bytes:
    """ZAM^Z0n^ZAM_Z01 for the request ``original``, encoded in its charset when the volet allows it."""
    _validate(status)
    header = original.header if isinstance(original, DocumentMessage) else original
    trigger, code, label, second, second_label, default_system = ZAM_EVENTS[status.kind]
    charset = header.charset if header.charset in ALLOWED_CHARSETS else "UNICODE UTF-8"
    # The original MSH-3/4 are copied raw: they were escaped with the original delimiters, which the volet
    # fixes to |^~\& (profils-messages.md, MSH-2).
    msh = [
        "MSH",
        "^~\\&",
        escape_text(app),
        escape_text(facility),
        header.sending_application,
        header.sending_facility,
        format_dtm(now),
        "",
        f"ZAM^{trigger}^ZAM_Z01",
        escape_text(control_id),
        escape_text(header.processing_id or "P"),
        "2.6",
        "",
        "",
        "",
        "",
        "FRA",
        charset,
        "",
        "",
        PROFILE,
    ]
    original_id = status.original_control_id or header.control_id
    yes_no = "Y" if status.success else "N"
    lines = [
        "|".join(msh),
        f"EVN||{format_dtm(status.timestamp)}",
        f"OBX|1|CWE|{code}^{escape_text(label)}^AckMetierZAM|{escape_text(original_id)}|{yes_no}^^expandedYes-NoIndicator"
        "||||||F|",
    ]
    if second:
        address = escape_text(status.recipient_address or "")
        lines.append(
            f"OBX|2|XTN|{second}^{escape_text(second_label)}^AckMetierZAM|{escape_text(status.recipient_id or '')}"
            f"|^^X.400^{address}||||||F|"
        )
    for error in status.errors:
        table = SMTP_ERROR_CODES if status.kind == "reception_mss" else APPLICATION_ERROR_CODES
        err_label = error.label or (table.get(error.code, "") if status.kind != "reception_dmp" else "")
        err5 = "^".join(
            [escape_text(error.code), escape_text(err_label), escape_text(error.system or default_system)]
        )
        lines.append(f"ERR|||{ERR3}|{error.severity}|{err5}")
    text = "\r".join(lines) + "\r"
    return text.encode(charset_to_codec(charset) or "utf-8")


def parse_zam(raw: bytes) -> ZamMessage:
    """Read a ZAM (for the test CREATEUR listener); Hl7Error on anything that is not a volet ZAM."""
    message, header = parse(raw)
    if header.message_type != "ZAM":
        raise Hl7Error(
            "200", f"Type de message non supporté : {header.message_type[:10]}", location="MSH^1^9"
        )
    kind = _KIND_BY_TRIGGER.get(header.trigger)
    if kind is None:
        raise Hl7Error("201", f"Événement ZAM non supporté : {header.trigger[:10]}", location="MSH^1^9")
    _, code, _, second, _, _ = ZAM_EVENTS[kind]
    obxs = segments(message, "OBX")
    if not obxs or get_field(obxs[0], 3, 1, 1) != code:
        raise Hl7Error("100", f"OBX {code} absent", location="OBX^1")
    value = get_field(obxs[0], 5, 1, 1)
    if value not in ("Y", "N"):
        raise Hl7Error("103", f"Statut {code} inconnu : {value[:5]!r}", location="OBX^1^5")
    address = recipient_id = None
    if second:
        if len(obxs) < 2 or get_field(obxs[1], 3, 1, 1) != second:
            raise Hl7Error("100", f"OBX {second} absent", location="OBX^2")
        address = get_field(obxs[1], 5, 1, 4) or None
        recipient_id = get_field(obxs[1], 4) or None
    evns = segments(message, "EVN")
    stamp = get_field(evns[0], 2, 1, 1) if evns else ""
    try:
        timestamp = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise Hl7Error("102", f"Date EVN-2 invalide : {stamp[:20]!r}", location="EVN^1^2") from None
    errors = [
        ZamError(
            code=get_field(err, 5, 1, 1),
            label=get_field(err, 5, 1, 2),
            system=get_field(err, 5, 1, 3),
            severity=get_field(err, 4) or "E",
        )
        for err in segments(message, "ERR")
    ]
    status = ZamStatus(
        kind=kind,
        success=value == "Y",
        timestamp=timestamp,
        original_control_id=get_field(obxs[0], 4),
        recipient_address=address,
        recipient_id=recipient_id,
        errors=errors,
    )
    return ZamMessage(header=header, status=status)


def original_header(zam_context: dict[str, Any]) -> MessageHeader:
    """The parts of the DPI's MSH that a ZAM echoes, as kept with the document when it was accepted."""
    return MessageHeader(
        sending_application=zam_context.get("sending_application", ""),
        sending_facility=zam_context.get("sending_facility", ""),
        receiving_application="",
        receiving_facility="",
        datetime="",
        message_type="",
        trigger="",
        structure="",
        control_id=zam_context.get("control_id", ""),
        processing_id=zam_context.get("processing_id", "P"),
        version="2.6",
        charset=zam_context.get("charset", "UNICODE UTF-8"),
    )
