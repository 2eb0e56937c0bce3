"""Small guards for values that leave the platform in headers: redirect targets and document downloads."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote

__all__ = ["DOCUMENT_CSP", "attachment_headers", "local_redirect_target"]

# Served document content (CDA, PDF) must never run in the platform's origin: ``sandbox`` gives it an opaque
# origin without scripts even if a browser renders it despite the attachment disposition.
DOCUMENT_CSP = "sandbox; default-src 'none'"


def _unsafe_character(text: str) -> bool:
    # Browsers strip tabs and newlines from URLs ("/\t/evil" becomes "//evil") and treat "\" as "/".
    return any(ch == "\\" or ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text)


def local_redirect_target(value: str | None, default: str) -> str:
    """``value`` when it is a path of this site ("/identites/3?q=a%20b"), else ``default``.

    Refused: anything not starting with exactly one "/" ("//evil", "https://evil", "javascript:…"); any raw
    backslash, whitespace or control character; and in the path, the same after percent-decoding,
    since a browser may decode or drop them ("/%09/evil" becomes "//evil") and end up on another host. The query
    string may carry encoded spaces: it cannot change the host.
    """
    if not value or not value.startswith("/") or _unsafe_character(value):
        return default
    path = value.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):
        if path.startswith(("//", "/\\")) or _unsafe_character(path):
            return default
        decoded = unquote(path)
        if decoded == path:
            return value
        path = decoded
    return default  # still encoded after three rounds: nobody legitimate builds such a path


def attachment_headers(filename: str, media_type: str) -> dict[str, str]:
    """Headers for serving a document's content as a download that cannot act in the platform's origin.

    ``media_type`` may come from the sender (a MIME part, FHIR contentType): it is checked so that it cannot
    add header lines.
    """
    if not media_type.isascii() or any(unicodedata.category(ch).startswith("C") for ch in media_type):
        raise ValueError("type de contenu invalide")
    # RFC 6266: an ASCII fallback for old clients, the exact name in filename* (RFC 5987, UTF-8).
    cleaned = "".join(ch for ch in filename if not unicodedata.category(ch).startswith("C")) or "document"
    fallback = "".join(ch if ch.isascii() and ch not in '"\\;' else "_" for ch in cleaned)
    return {
        "Content-Type": media_type,
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(cleaned, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": DOCUMENT_CSP,
    }
