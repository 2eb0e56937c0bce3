"""Sandbox of the Annuaire Santé FHIR API: fictitious directory content and the simulated v2 API."""

from opensegur.sandbox.annuaire.fixtures import directory_mailboxes
from opensegur.sandbox.annuaire.router import ANNUAIRE_FHIR_PATH, SANDBOX_API_KEY, create_annuaire_router

__all__ = ["ANNUAIRE_FHIR_PATH", "SANDBOX_API_KEY", "create_annuaire_router", "directory_mailboxes"]
