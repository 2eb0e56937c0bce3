"""JSON Schema of each file of the configuration directory, generated from the models, for editors (e.g. Taplo /
Even Better TOML: ``#:schema ./sites.schema.json`` at the top of ``sites.toml``).

The generated files ship in ``schemas/``; a test fails when they no longer match the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opensegur.hospital.model import CONFIG_FILES

SCHEMA_DIR = Path(__file__).with_name("schemas")


def schema_name(config_file: str) -> str:
    """``sites.toml`` → ``sites.schema.json``."""
    return config_file.removesuffix(".toml") + ".schema.json"


def file_schemas() -> dict[str, dict[str, Any]]:
    """The schema of each file, by file name."""
    return {
        spec.name: {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": schema_name(spec.name),
            **spec.model.model_json_schema(),
            "title": f"OpenSégur — {spec.name}",
        }
        for spec in CONFIG_FILES
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in file_schemas().items():
        path = directory / schema_name(name)
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
