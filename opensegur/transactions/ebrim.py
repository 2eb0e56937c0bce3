"""ebRIM as peers write it, brought to the one form the XDS readers expect.

ebRIM lets a ``Classification`` or an ``ExternalIdentifier`` sit inside the object it describes **or** at the top
level of the object list, pointing to it with ``classifiedObject`` / ``registryObject`` (ebRIM 3.0 §4.3 and §4.7;
the IHE wiki's "XDS Implementation Notes" shows both as valid). Older senders — XDS.a sources and XDM media from
before XDS.b — write ebRIM 2.1, whose namespaces and list element differ but whose objects, slots and ids are the
same. :func:`normalize` rewrites a freshly parsed tree in place into nested ebRIM 3.0, so the sandbox registry, the
XDM reader and the ITI-18/ITI-57 parsers of :mod:`opensegur.transactions.xds` read every legal placement the same
way and report defects against the object they belong to.
"""

from __future__ import annotations

from lxml import etree

__all__ = ["NS_LCM", "NS_RIM", "NS_RIM_21", "NS_RS_21", "normalize"]

NS_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
NS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS_RIM_21 = "urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1"
NS_RS_21 = "urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"
_R = f"{{{NS_RIM}}}"
_R21 = f"{{{NS_RIM_21}}}"
_CLASSIFICATION = f"{_R}Classification"
_EXTERNAL_ID = f"{_R}ExternalIdentifier"
# The objects whose classifications and identifiers the XDS readers look for inside them.
_DESCRIBED = frozenset({f"{_R}ExtrinsicObject", f"{_R}RegistryPackage"})
# ebRIM 2.1 names with a different 3.0 name; every other 2.1 rim element keeps its local name.
_RENAMED_21 = {
    f"{_R21}LeafRegistryObjectList": f"{_R}RegistryObjectList",
    f"{{{NS_RS_21}}}SubmitObjectsRequest": f"{{{NS_LCM}}}SubmitObjectsRequest",
}


def _upgrade_21(root: etree._Element) -> None:
    for el in root.iter(f"{_R21}*", f"{{{NS_RS_21}}}*"):
        renamed = _RENAMED_21.get(el.tag)
        if renamed is not None:
            el.tag = renamed
        elif el.tag.startswith(_R21):
            el.tag = _R + etree.QName(el).localname


def _attach(rol: etree._Element) -> None:
    described = {el.get("id"): el for el in rol if el.tag in _DESCRIBED and el.get("id")}
    for cl in rol.findall(_CLASSIFICATION):
        target = described.get(cl.get("classifiedObject"))
        if target is None:
            continue  # it classifies an object outside this list (an ObjectRef): the reader sees it where it is
        # ebRIM orders Classification before ExternalIdentifier inside an object; appending after them would do
        # for our readers, but keeping the schema order lets the normalised tree be validated or logged as is.
        first_ei = target.find(_EXTERNAL_ID)
        if first_ei is not None:
            first_ei.addprevious(cl)
        else:
            target.append(cl)
    for ei in rol.findall(_EXTERNAL_ID):
        target = described.get(ei.get("registryObject"))
        if target is not None:
            target.append(ei)


def normalize(root: etree._Element) -> etree._Element:
    """Rewrite ``root`` (a SubmitObjectsRequest, an AdhocQueryResponse, a RegistryObjectList…) in place.

    ebRIM 2.1 elements become ebRIM 3.0 ones; classifications and external identifiers written at the top level of
    a ``RegistryObjectList`` move into the ``ExtrinsicObject`` or ``RegistryPackage`` they name. Anything that names
    no object of the list stays where it is, so the readers still report it. Returns ``root``.
    """
    _upgrade_21(root)
    lists = [root] if root.tag == f"{_R}RegistryObjectList" else list(root.iter(f"{_R}RegistryObjectList"))
    for rol in lists:
        _attach(rol)
    return root
