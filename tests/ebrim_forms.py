"""Rewrite metadata we built into the other legal ebRIM forms peers send, to test that every reader accepts them."""

from __future__ import annotations

from lxml import etree

from opensegur.transactions.ebrim import NS_LCM, NS_RIM, NS_RIM_21, NS_RS_21
from opensegur.transactions.ihe_ids import ASSOC_ALIASES

R = f"{{{NS_RIM}}}"


def hoist(root: etree._Element) -> etree._Element:
    """Move every nested Classification and ExternalIdentifier to the top of its RegistryObjectList (in place)."""
    for rol in root.iter(f"{R}RegistryObjectList"):
        for obj in list(rol):
            obj_id = obj.get("id")
            for cl in obj.findall(f"{R}Classification"):
                cl.set("classifiedObject", obj_id or "")
                rol.append(cl)
            for ei in obj.findall(f"{R}ExternalIdentifier"):
                ei.set("registryObject", obj_id or "")
                rol.append(ei)
    return root


def short_association_types(root: etree._Element) -> etree._Element:
    """``HasMember``, ``RPLC``… as XDS.a and many XDM writers put them (in place)."""
    short = {full: name for name, full in ASSOC_ALIASES.items() if ":" not in name}
    for a in root.iter(f"{R}Association"):
        a.set("associationType", short.get(a.get("associationType", ""), a.get("associationType", "")))
    return root


def as_ebrim21(xml: bytes) -> bytes:
    """An ebRIM 3.0 SubmitObjectsRequest rewritten as ebRIM 2.1 (XDS.a era XDM METADATA.XML)."""
    text = xml.decode("utf-8")
    text = text.replace(NS_LCM, NS_RS_21).replace(NS_RIM, NS_RIM_21)
    text = text.replace("RegistryObjectList", "LeafRegistryObjectList")
    return text.encode("utf-8")
