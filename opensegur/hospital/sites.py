"""Which site of the GHT a name designates: an IPP authority (namespace or OID), a FINESS, or a declared alias
such as the MSH-4 a DPI sends (``settings["facility_aliases"]``).

Every message is resolved to its site. Reading and loading every site's row for each one cost a quarter of an
identity message, so the names and the rows are kept per database and read again only when they may have changed: a
configuration version was applied (by any process: :mod:`opensegur.hospital.apply` records one with the
structures it writes) or this process committed a write to a structure row (tests, tools). Within one
transaction the check is made once, for every message a group commit brings together. The site returned joins the
session from the kept row without a query (``merge(load=False)``): loading it cost a tenth of a message; a caller
that only reads it gets the kept row itself (``read_site``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached

from opensegur.store.models import ConfigVersion, Structure

# Read by every transaction that resolves a site: on the table column, a Core query (half the cost of the ORM's),
# run on the session's connection (the session's execution would add a fifth).
_LATEST_VERSION = select(func.max(cast(Table, ConfigVersion.__table__).c.id))
_STRUCTURE = cast(Table, Structure.__table__)
_SITES = select(_STRUCTURE).where(_STRUCTURE.c.kind == "EG").order_by(_STRUCTURE.c.id)
_IN_TRANSACTION = "opensegur.site_names"  # session.info key: the names checked for this transaction
_STRUCTURE_WRITTEN = "opensegur.structure_written"  # session.info key: a structure row was flushed
_OWN = (None, -1)  # the token of names read by a transaction that wrote a structure, for itself alone


@dataclass(frozen=True)
class _Names:
    token: tuple[int | None, int]  # (latest configuration version, this process's structure commits)
    # By site id, the order of preference among equals: the row, detached and never changed, and its names.
    sites: tuple[tuple[Structure, frozenset[str]], ...]


_lock = threading.Lock()
_commits = 0  # structure writes committed by this process
_by_engine: weakref.WeakKeyDictionary[Engine, _Names] = weakref.WeakKeyDictionary()


def resolve_site(session: Session, names: list[str]) -> Structure | None:
    """The site known under one of ``names``, tried in order: a DPI serving several sites sends its own MSH-4
    with the IPP domain of each, and the domain decides."""
    found = _find(session, names)
    if found is None:
        return None
    row, token = found
    if token == _OWN:  # the transaction's own rows
        return session.get(Structure, row.id)
    # A site already in this session may carry changes of its own: merging the kept row would undo them.
    loaded = session.identity_map.get(session.identity_key(Structure, row.id))
    return cast(Structure, loaded) if loaded is not None else session.merge(row, load=False)


def read_site(session: Session, names: list[str]) -> Structure | None:
    """As :func:`resolve_site`, for a caller that only reads the site's columns: the kept row itself, detached and
    never to be changed, outside the session (merging it cost a fortieth of an identity message), unless the
    session holds that site, which may carry changes of its own."""
    found = _find(session, names)
    if found is None:
        return None
    loaded = session.identity_map.get(session.identity_key(Structure, found[0].id))
    return cast(Structure, loaded) if loaded is not None else found[0]


def _find(session: Session, names: list[str]) -> tuple[Structure, tuple[int | None, int]] | None:
    """The kept row of the first of ``names`` a site declares, and the token of the names it was found in."""
    wanted = [n for n in names if n]
    if not wanted:
        return None
    known = _site_names(session)
    for name in wanted:
        for row, names_of_site in known.sites:
            if name in names_of_site:
                return row, known.token
    return None


def _site_names(session: Session) -> _Names:
    known: _Names | None = session.info.get(_IN_TRANSACTION)
    if known is not None:
        return known
    if session.info.get(_STRUCTURE_WRITTEN):
        # This transaction wrote a structure: its own names, read now and kept for nobody else.
        session.flush()
        return _read(session, _OWN)
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    # The token is read before the rows: a change committed in between makes the next check read them again.
    token = (session.connection().scalar(_LATEST_VERSION), _commits)
    known = _by_engine.get(engine)
    if known is None or known.token != token:
        known = _read(session, token)
        with _lock:
            _by_engine[engine] = known
    session.info[_IN_TRANSACTION] = known
    return known


def _read(session: Session, token: tuple[int | None, int]) -> _Names:
    sites = []
    for values in session.execute(_SITES).mappings():
        row = Structure(**values)
        make_transient_to_detached(row)
        aliases = (row.settings or {}).get("facility_aliases") or []
        names = (row.ipp_authority, row.ipp_authority_oid, row.finess, *aliases)
        sites.append((row, frozenset(n for n in names if n)))
    return _Names(token, tuple(sites))


def _mark(session: Session | None) -> None:
    if session is not None:
        session.info[_STRUCTURE_WRITTEN] = True
        session.info.pop(_IN_TRANSACTION, None)


def _added(session: Session, instance: object) -> None:
    if isinstance(instance, Structure):
        _mark(session)


def _written(mapper: Mapper[Any], connection: Any, target: Structure) -> None:
    _mark(Session.object_session(target))


def _committed(session: Session) -> None:
    global _commits
    if session.info.pop(_STRUCTURE_WRITTEN, False):
        with _lock:
            _commits += 1


for _event in ("after_insert", "after_update", "after_delete"):
    event.listen(Structure, _event, _written)
event.listen(Session, "transient_to_pending", _added)
event.listen(Session, "after_commit", _committed)
