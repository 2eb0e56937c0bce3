"""The French change list between two configurations."""

from __future__ import annotations

from opensegur.hospital.diff import diff_configs
from opensegur.hospital.loader import load_files

from .helpers import DPIS, FILES, ROLES, SITES


def test_same_content_no_change() -> None:
    assert diff_configs(load_files(dict(FILES)), load_files(dict(FILES))) == []


def test_each_kind_of_change_is_listed() -> None:
    old = load_files(dict(FILES))
    sites = SITES.replace('label = "Pneumologie"', 'label = "Pneumologie et allergologie"') + (
        '\n[[sites]]\nfiness = "330000043"\nname = "EHPAD de Montval"\n'
        'ipp_domain = { namespace = "CHMV-E", oid = "1.2.250.1.999.77.3" }\n'
    )
    new = load_files(
        {
            **FILES,
            "sites.toml": sites,
            "dpis.toml": DPIS.replace('msh3 = ["DPI-MV"]', 'msh3 = ["DPI-MV", "DPI-MV2"]'),
            "mssante.toml": "",
            "roles.toml": ROLES.replace('"dmp.consult"]', '"dmp.consult", "break_glass"]'),
            "identity_providers.toml": "",
        }
    )
    assert diff_configs(old, new) == [
        "+ site 330000043 ajouté : « EHPAD de Montval », domaine d'IPP CHMV-E (1.2.250.1.999.77.3)",
        "~ site 330000027 : UF 2002 renommée : « Pneumologie » → « Pneumologie et allergologie »",
        "~ DPI DPI Montval : msh3 : DPI-MV → DPI-MV, DPI-MV2",
        "- boîte MSSanté urgences@ch-montval.mssante.fr retirée : organisationnelle, site 330000027",
        "~ rôle medecin : + break_glass (Bris de glace)",
        "- fournisseur d'identité SSO de l'établissement retiré",
        "- fournisseur d'identité Pro Santé Connect retiré",
    ]


def test_first_version_lists_everything_as_added() -> None:
    lines = diff_configs(None, load_files(dict(FILES)))
    assert lines[0] == "GHT : aucun → GHT de l'Estuaire (test) (330000019)"
    assert (
        "+ site 330000035 ajouté : « CH de Montval — site Sud », domaine d'IPP CHMV-S (1.2.250.1.999.77.2)"
        in lines
    )
    assert (
        "+ boîte MSSanté urgences@ch-montval.mssante.fr ajoutée : organisationnelle, site 330000027" in lines
    )
    assert any(line.startswith("+ fournisseur d'identité Pro Santé Connect ajouté") for line in lines)
