"""How the pages write an XDS date (DTM) for a clinician, whatever its precision."""

from __future__ import annotations

import pytest

from opensegur.web.documents import dtm_fr


@pytest.mark.parametrize(
    ("dtm", "shown"),
    [
        ("1975", "1975"),  # a vaccination remembered by its year only
        ("197506", "06/1975"),
        ("19750615", "15/06/1975"),
        ("20261204093000", "04/12/2026 10:30"),  # UTC shown in Paris time
        ("", "—"),
        (None, "—"),
        ("inconnue", "inconnue"),
    ],
)
def test_a_dtm_of_any_precision_is_written_as_far_as_it_goes(dtm: str | None, shown: str) -> None:
    assert dtm_fr(dtm) == shown
