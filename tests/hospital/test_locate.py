"""Lines of key paths in TOML texts: tables, arrays of tables, inline tables, arrays on several lines."""

from __future__ import annotations

from opensegur.hospital.locate import locate

TEXT = """\
# commentaire [[pas.une.table]]
titre = "x"
notes = '''
[[sites]]
faux = 1
'''

[[sites]]
finess = "1"
ipp = { namespace = "A", oid = "1.2" }

[[sites.units]]
code = "a"

[[sites.units]]
code = "b"

[[sites]]
finess = "2"
alias = [
  "x",  # premier
  "y",
]
"a.b".c = 3

[roles.medecin]
actions = ["identity.read", "documents.read"]
"""


def test_paths_are_found_on_their_line() -> None:
    assert locate(TEXT, ["titre"]) == 2
    assert locate(TEXT, ["sites", 0, "finess"]) == 9
    assert locate(TEXT, ["sites", 0, "ipp", "oid"]) == 10
    assert locate(TEXT, ["sites", 0, "units", 1, "code"]) == 16
    assert locate(TEXT, ["sites", 1, "finess"]) == 19
    assert locate(TEXT, ["sites", 1, "alias", 1]) == 22
    assert locate(TEXT, ["sites", 1, "a.b", "c"]) == 24
    assert locate(TEXT, ["roles", "medecin", "actions", 1]) == 27


def test_a_missing_path_falls_back_to_its_table() -> None:
    assert locate(TEXT, ["sites", 1, "name"]) == 18
    assert locate(TEXT, ["roles", "medecin", "label"]) == 26
    assert locate(TEXT, ["absent"]) == 1
