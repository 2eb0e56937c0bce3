"""DMP sandbox: XDS.b registry + repository and TD0.2, persistent, validating like the real service."""

from __future__ import annotations

from opensegur.sandbox.dmp.app import REPOSITORY_UNIQUE_ID, FaultConfig, create_dmp_app

__all__ = ["REPOSITORY_UNIQUE_ID", "FaultConfig", "create_dmp_app"]
