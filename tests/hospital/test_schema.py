"""The JSON Schema shipped for editors matches the models."""

from __future__ import annotations

import json

import pytest

from opensegur.cli import main
from opensegur.hospital.model import CONFIG_FILES
from opensegur.hospital.schema import SCHEMA_DIR, file_schemas, render, schema_name


def test_the_shipped_schemas_are_up_to_date() -> None:
    for name, schema in file_schemas().items():
        shipped = SCHEMA_DIR / schema_name(name)
        assert shipped.read_text(encoding="utf-8") == render(schema), (
            f"{shipped} is stale: run `opensegur config schema --output opensegur/hospital/schemas`"
        )
    assert sorted(p.name for p in SCHEMA_DIR.iterdir()) == sorted(schema_name(f.name) for f in CONFIG_FILES)


def test_config_schema_prints_one_file_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema", "roles.toml"]) == 0
    roles = json.loads(capsys.readouterr().out)
    actions = roles["$defs"]["Action"]["enum"]
    assert "dmp.consult" in actions and roles["properties"]["roles"]["type"] == "object"
    assert main(["config", "schema"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {f.name for f in CONFIG_FILES}
