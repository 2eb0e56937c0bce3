"""What changes from one configuration to another, as French lines a hospital's engineer reads before applying
(``opensegur config diff``) and the admin page shows beside each applied version."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from opensegur.hospital.model import HospitalConfig, RoleConfig, SiteConfig
from opensegur.security.matrix import Action

T = TypeVar("T", bound=BaseModel)
FEMININE = frozenset({"boîte MSSanté"})  # French past participles agree with the noun


def diff_configs(old: HospitalConfig | None, new: HospitalConfig) -> list[str]:
    """One line per change; empty when both declare the same. ``old`` None: nothing applied yet."""
    out: list[str] = []
    if old is None or old.ght != new.ght:
        was = f"{old.ght.name} ({old.ght.finess})" if old is not None else "aucun"
        out.append(f"GHT : {was} → {new.ght.name} ({new.ght.finess})")
    out += _keyed(
        "site",
        {s.finess: s for s in old.sites} if old else {},
        {s.finess: s for s in new.sites},
        lambda s: f"« {s.name} », domaine d'IPP {s.ipp_domain.namespace} ({s.ipp_domain.oid})",
        _site_changes,
    )
    out += _keyed(
        "DPI",
        {d.name: d for d in old.dpis} if old else {},
        {d.name: d for d in new.dpis},
        lambda d: f"site {d.site}, MSH-3 {_show(d.msh3)}, MSH-4 {_show(d.msh4)}",
        _field_changes,
    )
    out += _keyed(
        "boîte MSSanté",
        {m.address: m for m in old.mailboxes} if old else {},
        {m.address: m for m in new.mailboxes},
        lambda m: f"{m.kind}, site {m.site}",
        _field_changes,
    )
    out += _keyed(
        "rôle",
        dict(old.roles) if old else {},
        dict(new.roles),
        lambda r: f"« {r.label} » : {', '.join(a.value for a in r.actions)}",
        _role_changes,
    )
    providers = old.identity_providers if old else None
    for name, label in (("sso", "SSO de l'établissement"), ("psc", "Pro Santé Connect")):
        before = getattr(providers, name) if providers else None
        after = getattr(new.identity_providers, name)
        if before is None and after is not None:
            out.append(f"+ fournisseur d'identité {label} ajouté ({after.issuer})")
        elif before is not None and after is None:
            out.append(f"- fournisseur d'identité {label} retiré")
        elif before is not None and after is not None and before != after:
            out += [f"~ fournisseur d'identité {label} : {c}" for c in _field_changes(before, after)]
    return out


def _keyed(
    kind: str,
    old: Mapping[str, T],
    new: Mapping[str, T],
    describe: Callable[[T], str],
    changes: Callable[[T, T], list[str]],
) -> list[str]:
    e = "e" if kind in FEMININE else ""
    out = [f"+ {kind} {key} ajouté{e} : {describe(item)}" for key, item in new.items() if key not in old]
    out += [f"- {kind} {key} retiré{e} : {describe(item)}" for key, item in old.items() if key not in new]
    for key, item in new.items():
        if key in old and old[key] != item:
            out += [f"~ {kind} {key} : {c}" for c in changes(old[key], item)]
    return out


def _show(value: Any) -> str:
    if value is None or value == []:
        return "(rien)"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(_show(v) for v in value)
    return str(value)


def _field_changes(old: BaseModel, new: BaseModel, skip: tuple[str, ...] = ()) -> list[str]:
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [
        f"{name} : {_show(before[name])} → {_show(after[name])}"
        for name in after
        if name not in skip and before[name] != after[name]
    ]


def _site_changes(old: SiteConfig, new: SiteConfig) -> list[str]:
    out = _field_changes(old, new, skip=("units",))
    before = {u.code: u.label for u in old.units}
    after = {u.code: u.label for u in new.units}
    out += [f"UF {code} « {label} » ajoutée" for code, label in after.items() if code not in before]
    out += [f"UF {code} « {label} » retirée" for code, label in before.items() if code not in after]
    out += [
        f"UF {code} renommée : « {before[code]} » → « {label} »"
        for code, label in after.items()
        if code in before and before[code] != label
    ]
    return out


def _role_changes(old: RoleConfig, new: RoleConfig) -> list[str]:
    out = _field_changes(old, new, skip=("actions",))
    before: set[Action] = set(old.actions)
    after: set[Action] = set(new.actions)
    out += [f"+ {a.value} ({a.label})" for a in Action if a in after - before]
    out += [f"- {a.value} ({a.label})" for a in Action if a in before - after]
    return out
