"""Content-addressed payloads: raw messages, CDA, exchanges — stored once, referenced by SHA-256."""

from __future__ import annotations

import hashlib
from typing import cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from opensegur.store.db import insert_unless_exists
from opensegur.store.models import Payload

_PAYLOAD = cast(Table, Payload.__table__)


def store_payload(session: Session, data: bytes) -> str:
    # A Core statement, on the session's connection: the session's execution would add a fifth to its cost.
    digest = hashlib.sha256(data).hexdigest()
    session.connection().execute(
        insert_unless_exists(session, _PAYLOAD, "sha256"), {"sha256": digest, "size": len(data), "data": data}
    )
    return digest


def load_payload(session: Session, digest: str) -> bytes:
    return session.get_one(Payload, digest).data
