"""The requirements the report lists, read from ``requirements.toml`` beside this module."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CATALOGUE", "Requirement", "load_catalogue"]

CATALOGUE = Path(__file__).with_name("requirements.toml")


@dataclass(frozen=True)
class Requirement:
    id: str
    volet: str
    transaction: str
    title: str
    reference: str


def load_catalogue(path: Path = CATALOGUE) -> list[Requirement]:
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    requirements = [Requirement(**entry) for entry in data.get("requirement", [])]
    ids = [r.id for r in requirements]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"{path.name} : exigences en double : {', '.join(duplicated)}")
    return requirements
