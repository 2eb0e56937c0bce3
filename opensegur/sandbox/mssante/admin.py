"""HTTP side of the MSSanté sandbox: read-only inspection and the admin calls of tests and demos.

Mounted under ``/mssante``: ``GET /mailboxes``, ``GET /inspect``, ``POST|GET|DELETE /_admin/faults``,
``POST /_admin/deliver`` (a raw RFC 5322 message arriving from outside) and ``POST /_admin/read`` (the
recipient opens a message, which sends the MDN asked for).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from opensegur.sandbox.mssante.maildir_store import INBOX, StoreError, canonical_address
from opensegur.sandbox.mssante.operator import MssFault, MssOperator

__all__ = ["create_mssante_router"]

_STATUS = {"NONEXISTENT": 404, "TOOBIG": 413, "PARSE": 422, "CANNOT": 422, "ALREADYEXISTS": 409}


def _http_error(exc: StoreError) -> HTTPException:
    return HTTPException(_STATUS.get(exc.code, 400), f"{exc} ({exc.code})")


def _address(value: str) -> str:
    try:
        return canonical_address(value)
    except StoreError as exc:
        raise HTTPException(422, f"Adresse invalide / invalid address : {value[:80]!r}") from exc


def create_mssante_router(operator: MssOperator, *, prefix: str = "/mssante") -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["sandbox MSSanté"])

    @router.get("/mailboxes")
    async def mailboxes() -> dict[str, Any]:
        return {
            "mailboxes": await asyncio.to_thread(operator.mailboxes),
            "patient_domain": operator.patient_domain,
            "smtp": f"{operator.host}:{operator.smtp_port}",
            "imap": f"{operator.host}:{operator.imap_port}",
        }

    @router.get("/inspect")
    async def inspect(
        mailbox: str = Query(min_length=3, max_length=254),
        folder: str | None = Query(default=None, max_length=64),
    ) -> dict[str, Any]:
        address = _address(mailbox)
        if not operator.store.has_mailbox(address):
            raise HTTPException(404, f"Boîte aux lettres inconnue / unknown mailbox : {address}")
        try:
            return await asyncio.to_thread(operator.inspect, address, folder)
        except StoreError as exc:
            raise _http_error(exc) from exc

    @router.get("/_admin/faults")
    async def faults() -> dict[str, Any]:
        return {"faults": [f.model_dump() for f in operator.faults.active().values()]}

    @router.post("/_admin/faults")
    async def set_fault(fault: MssFault) -> dict[str, Any]:
        if fault.recipient is not None:
            _address(fault.recipient)
        operator.set_fault(fault)
        return {"faults": [f.model_dump() for f in operator.faults.active().values()]}

    @router.delete("/_admin/faults")
    async def clear_faults() -> dict[str, Any]:
        operator.clear_faults()
        return {"faults": []}

    @router.post("/_admin/deliver")
    async def deliver(request: Request, mailbox: str = Query(min_length=3, max_length=254)) -> dict[str, Any]:
        address = _address(mailbox)
        if not operator.accepts(address):
            raise HTTPException(404, f"Boîte aux lettres inconnue / unknown mailbox : {address}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > operator.max_message_bytes:
                raise HTTPException(
                    413,
                    f"Message trop volumineux / message too large (> {operator.max_message_bytes} octets)",
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise HTTPException(422, "Corps vide : un message RFC 5322 est attendu / empty body")
        try:
            uid = await operator.deliver(address, raw)
        except StoreError as exc:
            raise _http_error(exc) from exc
        return {"mailbox": address, "folder": INBOX, "uid": uid}

    @router.post("/_admin/read")
    async def read(
        mailbox: str = Query(min_length=3, max_length=254),
        uid: int = Query(ge=1, lt=2**32),
        folder: str = Query(default=INBOX, max_length=64),
    ) -> dict[str, Any]:
        address = _address(mailbox)
        try:
            return await operator.read(address, uid, folder)
        except StoreError as exc:
            raise _http_error(exc) from exc

    return router
