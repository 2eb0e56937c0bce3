"""The matrix in force when no configuration directory is given: the demo GHT's ``roles.toml``.

A hospital's own directory (``serve --config DIR``) replaces it; this one keeps a platform started without one
closed to everybody but the demo roles, never open.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from opensegur.security.matrix import Matrix, matrix_from_config

DEMO_ROLES_FILE = Path(__file__).parents[1] / "ops" / "demo_ght" / "roles.toml"


@functools.cache
def default_matrix() -> Matrix:
    with DEMO_ROLES_FILE.open("rb") as fh:
        roles = tomllib.load(fh)["roles"]
    return matrix_from_config({rid: (r["label"], r["actions"]) for rid, r in roles.items()})
