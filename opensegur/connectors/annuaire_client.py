"""Async client of the Annuaire Santé FHIR API (v2): find practitioners and their MSSanté mailboxes.

The API cannot search practitioners by city (the city is on the Organization), so a search goes where the
criterion lives and resolves the rest with ``_revinclude``/``_include`` and ``_id`` lists, as the API guide
recommends (``uc-bal-mss``, ``full-call``): by name or RPPS through Practitioner, by city through Organization.
Every answer is size-bounded and checked before use; ``next`` links are followed only on the configured host,
so the API key never leaves for another server. Logs carry resource types, status codes and counts, never a
name, an RPPS or an address.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from opensegur.errors import OpenSegurError, RetryLater
from opensegur.identity.directory import (
    EXT_EMAIL_TYPE,
    EXT_MAILBOX_METADATA,
    PROFESSIONS,
    SPECIALTIES,
    SYSTEM_IDNAT_PS,
    SYSTEM_MAILBOX_TYPE,
    SYSTEM_PROFESSION,
    SYSTEM_SPECIALTY,
    SYSTEMS_FINESS,
    SYSTEMS_RPPS,
    DirectoryEntry,
    DirectoryOrganization,
    DirectoryPractitioner,
    DirectoryRole,
    Mailbox,
    MailboxType,
    fold,
)
from opensegur.identity.errors import IdentityError
from opensegur.identity.professionals import validate_rpps

__all__ = ["AnnuaireClient", "AnnuaireError", "AnnuaireQueryError", "AnnuaireUnavailable"]

log = logging.getLogger("opensegur.annuaire")

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_LIMIT = 100
_ID_CHUNK = 50  # _id values per request: keeps URLs short
_MAX_PAGES = 10
_MIN_MAILBOX_QUERY = 3


class AnnuaireError(OpenSegurError):
    """The directory refused the request or answered something unusable. ``message`` is French, for users."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class AnnuaireUnavailable(AnnuaireError, RetryLater):
    """The directory could not be reached, timed out or failed on its side: the same call may succeed later."""


class AnnuaireQueryError(AnnuaireError):
    """The search criteria themselves are unusable (nothing to search, malformed RPPS…)."""


@dataclass
class _Bundle:
    matches: list[dict[str, Any]] = field(default_factory=list)
    included: list[dict[str, Any]] = field(default_factory=list)
    next_url: str | None = None


PRACTITIONER_TTL_S = 900.0
PRACTITIONER_CACHE_SIZE = 10_000


class AnnuaireClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        verify: str | bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = urlsplit(self.base_url)[:2]
        self._max_bytes = max_response_bytes
        self._practitioners: dict[str, tuple[float, DirectoryPractitioner | None]] = {}
        self._http = httpx.AsyncClient(
            timeout=timeout,
            verify=verify,
            transport=transport,
            headers={"ESANTE-API-KEY": api_key, "Accept": "application/fhir+json"},
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- public API --------------------------------------------------------------------------------------------

    async def search_practitioners(
        self,
        name: str | None = None,
        rpps: str | None = None,
        city: str | None = None,
        limit: int = 20,
    ) -> list[DirectoryEntry]:
        """Practitioners matching every given criterion, with practice places, organisations and mailboxes."""
        name, city = (name or "").strip(), (city or "").strip()
        rpps_value = _checked_rpps(rpps)
        if not (name or rpps_value or city):
            raise AnnuaireQueryError("Indiquez au moins un critère : nom, RPPS ou ville")
        limit = max(1, min(limit, MAX_LIMIT))
        if name or rpps_value:
            params: dict[str, str] = {"_revinclude": "PractitionerRole:practitioner"}
            if name:
                params["name"] = name
            if rpps_value:
                params["identifier"] = rpps_value
            # With a city too, more candidates than wanted are read: the city filter comes after.
            found = await self._search("Practitioner", params, want=MAX_LIMIT if city else limit)
            practitioners = found.matches
            roles = _of_type(found.included, "PractitionerRole")
            organizations = await self._organizations(_refs(roles, "organization"))
        else:
            found = await self._search(
                "Organization",
                {"address-city": city, "_revinclude": "PractitionerRole:organization"},
                MAX_LIMIT,
            )
            organizations = {o["id"]: o for o in found.matches}
            ids = list(dict.fromkeys(_refs(_of_type(found.included, "PractitionerRole"), "practitioner")))[
                :limit
            ]
            practitioners, roles = await self._practitioners_by_id(ids)
            missing = [i for i in _refs(roles, "organization") if i not in organizations]
            organizations.update(await self._organizations(missing))
        entries = _entries(practitioners, roles, organizations)
        if city:
            wanted = fold(city)
            entries = [
                e for e in entries if any(fold(o.city or "").startswith(wanted) for o in e.organizations)
            ]
        log.info("annuaire: %d practitioner(s) found", len(entries[:limit]))
        return entries[:limit]

    async def practitioner(self, rpps: str) -> DirectoryPractitioner | None:
        """The practitioner of this RPPS (profession, specialty), remembered for ``PRACTITIONER_TTL_S``: the DMP's
        VIHF needs a physician's specialty on every call, and the directory changes far less often than that."""
        now = time.monotonic()
        cached = self._practitioners.get(rpps)
        if cached is not None and now - cached[0] < PRACTITIONER_TTL_S:
            return cached[1]
        entries = await self.search_practitioners(rpps=rpps, limit=1)
        found = entries[0].practitioner if entries else None
        if len(self._practitioners) >= PRACTITIONER_CACHE_SIZE:
            self._practitioners.clear()
        self._practitioners[rpps] = (now, found)
        return found

    async def mailboxes_of(self, rpps: str) -> list[Mailbox]:
        """The personal (PER/CAB) mailboxes of one practitioner; empty when the RPPS is unknown."""
        entries = await self.search_practitioners(rpps=rpps, limit=1)
        return list(entries[0].personal_mailboxes) if entries else []

    async def search_mailboxes(self, query: str, limit: int = 50) -> list[Mailbox]:
        """Mailboxes whose address contains ``query``, whoever holds them (practitioner or organisation)."""
        query = query.strip()
        if len(query) < _MIN_MAILBOX_QUERY:
            raise AnnuaireQueryError(
                f"Saisissez au moins {_MIN_MAILBOX_QUERY} caractères de l'adresse MSSanté recherchée"
            )
        limit = max(1, min(limit, MAX_LIMIT))
        by_mail = {"mailbox-mss:contains": query}
        people = await self._search(
            "Practitioner", {**by_mail, "_revinclude": "PractitionerRole:practitioner"}, limit
        )
        roles = await self._search("PractitionerRole", {**by_mail, "_include": "*"}, limit)
        orgs = await self._search("Organization", by_mail, limit)
        practitioners = {p["id"]: p for p in [*people.matches, *_of_type(roles.included, "Practitioner")]}
        all_roles = {r["id"]: r for r in [*roles.matches, *_of_type(people.included, "PractitionerRole")]}
        organizations = {o["id"]: o for o in [*orgs.matches, *_of_type(roles.included, "Organization")]}
        boxes: list[Mailbox] = []
        for entry in _entries(list(practitioners.values()), list(all_roles.values()), organizations):
            boxes += entry.personal_mailboxes
        for org in organizations.values():
            boxes += _organization(org).mailboxes
        wanted = query.casefold()
        found = {b.address.casefold(): b for b in boxes if wanted in b.address.casefold()}
        return list(found.values())[:limit]

    # ---- HTTP --------------------------------------------------------------------------------------------------

    async def _search(self, resource_type: str, params: dict[str, str], want: int) -> _Bundle:
        """A search with its ``next`` pages until ``want`` matches (or the page budget) are in."""
        out = _Bundle()
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str] | None = {**params, "_count": str(min(want, 50))}
        for _ in range(_MAX_PAGES):
            if url is None or len(out.matches) >= want:
                break
            page = _parse_bundle(await self._get_json(url, query, resource_type), resource_type)
            out.matches += page.matches
            out.included += page.included
            url, query = self._checked_next(page.next_url), None
        out.matches = out.matches[:want]
        return out

    def _checked_next(self, url: str | None) -> str | None:
        if url is None:
            return None
        if urlsplit(url)[:2] != self._origin:
            raise AnnuaireError("Réponse de l'Annuaire Santé mal formée : lien de page vers un autre serveur")
        return url

    async def _practitioners_by_id(self, ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        practitioners: list[dict[str, Any]] = []
        roles: list[dict[str, Any]] = []
        for chunk in _chunks(ids):
            found = await self._search(
                "Practitioner",
                {"_id": ",".join(chunk), "_revinclude": "PractitionerRole:practitioner"},
                len(chunk),
            )
            practitioners += found.matches
            roles += _of_type(found.included, "PractitionerRole")
        order = {pid: n for n, pid in enumerate(ids)}
        practitioners.sort(key=lambda p: order.get(p["id"], len(order)))
        return practitioners, roles

    async def _organizations(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            found = await self._search("Organization", {"_id": ",".join(chunk)}, len(chunk))
            out.update({o["id"]: o for o in found.matches})
        return out

    async def _get_json(self, url: str, params: dict[str, str] | None, resource_type: str) -> Any:
        try:
            async with self._http.stream("GET", url, params=params) as resp:
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _too_large(self._max_bytes)
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _too_large(self._max_bytes)
                status = resp.status_code
        except httpx.TimeoutException as exc:
            log.warning("annuaire %s: timeout", resource_type)
            raise AnnuaireUnavailable("L'Annuaire Santé n'a pas répondu à temps") from exc
        except httpx.TransportError as exc:
            log.warning("annuaire %s: unreachable (%s)", resource_type, type(exc).__name__)
            raise AnnuaireUnavailable("L'Annuaire Santé est injoignable") from exc
        log.debug("annuaire %s -> %s (%d bytes)", resource_type, status, len(body))
        if status in (401, 403):
            raise AnnuaireError(
                "L'Annuaire Santé refuse la clé d'API (en-tête ESANTE-API-KEY) : vérifiez la configuration",
                status_code=status,
            )
        if status == 429 or status >= 500:
            raise AnnuaireUnavailable(
                f"L'Annuaire Santé est momentanément indisponible (HTTP {status})", status_code=status
            )
        if status != 200:
            detail = _diagnostics(body)
            raise AnnuaireError(
                f"L'Annuaire Santé a refusé la recherche (HTTP {status})"
                + (f" : {detail}" if detail else ""),
                status_code=status,
            )
        try:
            return json.loads(body)
        except ValueError as exc:
            raise AnnuaireError("Réponse de l'Annuaire Santé mal formée : JSON illisible") from exc


# ---- parsing ---------------------------------------------------------------------------------------------------


def _too_large(limit: int) -> AnnuaireError:
    return AnnuaireError(f"Réponse de l'Annuaire Santé trop volumineuse (plus de {limit // 1024} Kio)")


def _checked_rpps(rpps: str | None) -> str | None:
    if rpps is None or not rpps.strip():
        return None
    try:
        # Format only: ANS test professionals carry RPPS whose Luhn key is wrong.
        return validate_rpps(rpps, check_key=False)
    except IdentityError as exc:
        raise AnnuaireQueryError(exc.message) from exc


def _diagnostics(body: bytes | bytearray) -> str:
    try:
        outcome = json.loads(body)
        issues = outcome.get("issue") if isinstance(outcome, dict) else None
        if isinstance(issues, list) and issues and isinstance(issues[0], dict):
            return str(issues[0].get("diagnostics") or "")[:300]
    except ValueError:
        pass
    return ""


def _malformed(why: str) -> AnnuaireError:
    return AnnuaireError(f"Réponse de l'Annuaire Santé mal formée : {why}")


def _parse_bundle(doc: Any, resource_type: str) -> _Bundle:
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise _malformed("un Bundle FHIR était attendu")
    if doc.get("type") != "searchset":
        raise _malformed("un Bundle de type searchset était attendu")
    entries = doc.get("entry", [])
    links = doc.get("link", [])
    if not isinstance(entries, list) or not isinstance(links, list):
        raise _malformed("entry et link doivent être des listes")
    out = _Bundle()
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise _malformed("entrée sans ressource")
        kind, rid = resource.get("resourceType"), resource.get("id")
        if (
            kind not in ("Practitioner", "PractitionerRole", "Organization")
            or not isinstance(rid, str)
            or not rid
        ):
            raise _malformed("ressource sans type connu ou sans identifiant")
        mode = (entry.get("search") or {}).get("mode", "match")
        # HAPI marks included resources "include"; a server that omits the mode is read by resource type.
        if mode == "match" and kind == resource_type:
            out.matches.append(resource)
        else:
            out.included.append(resource)
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise _malformed("lien de page suivante invalide")
            out.next_url = url
    return out


def _of_type(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r.get("resourceType") == kind]


def _refs(roles: list[dict[str, Any]], field_name: str) -> list[str]:
    out = []
    for role in roles:
        ref = role.get(field_name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            out.append(ref["reference"].rsplit("/", 1)[-1])
    return out


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _ID_CHUNK] for i in range(0, len(ids), _ID_CHUNK)]


def _str(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _codings(concepts: Any) -> list[dict[str, Any]]:
    out = []
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(concept, dict):
            out += [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return out


def _extension(items: Any, url: str) -> dict[str, Any] | None:
    for ext in items if isinstance(items, list) else []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def _mailboxes(
    telecoms: Any, default: MailboxType, owner: str, rpps: str | None, finess: str | None
) -> tuple[Mailbox, ...]:
    """MSSanté mailboxes among ContactPoints: an email tagged MSSANTE or carrying the mailbox metadata."""
    out = []
    for t in telecoms if isinstance(telecoms, list) else []:
        if not isinstance(t, dict) or t.get("system") != "email" or not _str(t.get("value")):
            continue
        exts = t.get("extension")
        email_type = _extension(exts, EXT_EMAIL_TYPE)
        meta = _extension(exts, EXT_MAILBOX_METADATA)
        is_mss = email_type is not None and (email_type.get("valueCoding") or {}).get("code") == "MSSANTE"
        if not is_mss and meta is None:
            continue  # a plain contact address of the structure, not a BAL MSS
        box_type, description, service, red_list = default, None, None, False
        for sub in (meta or {}).get("extension") or []:
            if not isinstance(sub, dict):
                continue
            if sub.get("url") == "type":
                for coding in _codings(sub.get("valueCodeableConcept")):
                    if (
                        coding.get("system") == SYSTEM_MAILBOX_TYPE
                        and coding.get("code") in MailboxType.__members__
                    ):
                        box_type = MailboxType(coding["code"])
            elif sub.get("url") == "description":
                description = _str(sub.get("valueString"))
            elif sub.get("url") == "service":
                service = _str(sub.get("valueString"))
            elif sub.get("url") == "listeRouge":
                red_list = sub.get("valueBoolean") is True
        if red_list:
            continue  # on the red list: not to be offered as a recipient
        address = str(t["value"]).strip()
        out.append(Mailbox(address, box_type, owner, rpps, finess, description, service))
    return tuple(out)


def _organization(resource: dict[str, Any]) -> DirectoryOrganization:
    name = _str(resource.get("name")) or "Structure sans nom"
    finess = None
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") in SYSTEMS_FINESS and _str(ident.get("value")):
            finess = str(ident["value"]).strip()
            break
    address = next((a for a in resource.get("address") or [] if isinstance(a, dict)), {})
    # The IG profile puts organisational mailboxes in contact.telecom, the API's examples in telecom.
    telecoms = list(resource.get("telecom") or [])
    for contact in resource.get("contact") or []:
        if isinstance(contact, dict):
            telecoms += list(contact.get("telecom") or [])
    return DirectoryOrganization(
        id=resource["id"],
        name=name,
        finess=finess,
        city=_str(address.get("city")),
        postal_code=_str(address.get("postalCode")),
        mailboxes=_mailboxes(telecoms, MailboxType.ORG, name, None, finess),
    )


def _rpps_of(resource: dict[str, Any]) -> str | None:
    fallback = None
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict) or not _str(ident.get("value")):
            continue
        value = str(ident["value"]).strip()
        type_codes = {c.get("code") for c in _codings(ident.get("type"))}
        if ident.get("system") in SYSTEMS_RPPS or "RPPS" in type_codes:
            return value
        if ident.get("system") == SYSTEM_IDNAT_PS and value.startswith("8") and len(value) == 12:
            fallback = value[1:]
    return fallback


def _practitioner(resource: dict[str, Any]) -> DirectoryPractitioner:
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") in ("usual", "official")), names[0] if names else {})
    given = " ".join(g for g in name.get("given") or [] if isinstance(g, str))
    civility = next((s for s in [*(name.get("suffix") or []), *(name.get("prefix") or [])] if _str(s)), None)
    profession_code = specialty_code = None
    for qualification in resource.get("qualification") or []:
        if not isinstance(qualification, dict):
            continue
        for coding in _codings(qualification.get("code")):
            if coding.get("system") == SYSTEM_PROFESSION and profession_code is None:
                profession_code = _str(coding.get("code"))
            elif coding.get("system") == SYSTEM_SPECIALTY and specialty_code is None:
                specialty_code = _str(coding.get("code"))
    rpps = _rpps_of(resource)
    family = _str(name.get("family")) or ""
    display = " ".join(p for p in (given, family) if p) or "Professionnel sans nom"
    return DirectoryPractitioner(
        id=resource["id"],
        rpps=rpps,
        family_name=family,
        given_name=given,
        civility=civility,
        profession_code=profession_code,
        profession=PROFESSIONS.get(profession_code or "", profession_code),
        specialty_code=specialty_code,
        specialty=SPECIALTIES.get(specialty_code or "", specialty_code),
        mailboxes=_mailboxes(resource.get("telecom"), MailboxType.PER, display, rpps, None),
    )


def _entries(
    practitioners: list[dict[str, Any]],
    roles: list[dict[str, Any]],
    organizations: dict[str, dict[str, Any]],
) -> list[DirectoryEntry]:
    orgs = {oid: _organization(o) for oid, o in organizations.items()}
    by_practitioner: dict[str, list[dict[str, Any]]] = {}
    for role in roles:
        for pid in _refs([role], "practitioner"):
            by_practitioner.setdefault(pid, []).append(role)
    entries = []
    for resource in practitioners:
        p = _practitioner(resource)
        entry_roles = []
        for role in by_practitioner.get(p.id, []):
            org_ids = _refs([role], "organization")
            org = orgs.get(org_ids[0]) if org_ids else None
            boxes = _mailboxes(
                role.get("telecom"), MailboxType.PER, p.display_name, p.rpps, org.finess if org else None
            )
            entry_roles.append(DirectoryRole(id=role["id"], organization=org, mailboxes=boxes))
        entries.append(DirectoryEntry(p, tuple(entry_roles)))
    return entries
