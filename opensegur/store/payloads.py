"""Content-addressed payloads: raw messages, CDA, exchanges — stored once, referenced by SHA-256."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from opensegur.store.models import Payload


def store_payload(session: Session, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Payload, digest) is None:
        session.add(Payload(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


def load_payload(session: Session, digest: str) -> bytes:
    return session.get_one(Payload, digest).data
