import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensegur.identity import (
    TRANSITIONS,
    HighTrustDocument,
    IdentityError,
    IdentityEvent,
    IdentityState,
    IdentityStatus,
    LowTrustDocument,
    after_document_check,
    after_insi_match,
    after_insi_no_match,
    after_strict_trait_change,
    apply,
    document_label,
    from_declared,
    initial_state,
    is_high_trust,
    may_transmit_ins,
    rniv,
)

PROV, RECUP, VALI, QUAL = IdentityStatus.PROV, IdentityStatus.RECUP, IdentityStatus.VALI, IdentityStatus.QUAL
CNI = HighTrustDocument.NATIONAL_ID_CARD.value


def state(status: IdentityStatus, document: str | None = None) -> IdentityState:
    if document is None and status in (VALI, QUAL):
        document = CNI
    return IdentityState(status, insi_verified=status in (RECUP, QUAL), document_checked=document)


# Expected outcome of every (status, event) pair; written independently of the module's table.
EXPECTED = {
    (PROV, IdentityEvent.INSI_MATCH): RECUP,
    (RECUP, IdentityEvent.INSI_MATCH): RECUP,
    (VALI, IdentityEvent.INSI_MATCH): QUAL,
    (QUAL, IdentityEvent.INSI_MATCH): QUAL,
    (PROV, IdentityEvent.INSI_NO_MATCH): PROV,
    (RECUP, IdentityEvent.INSI_NO_MATCH): PROV,
    (VALI, IdentityEvent.INSI_NO_MATCH): VALI,
    (QUAL, IdentityEvent.INSI_NO_MATCH): VALI,
    (PROV, IdentityEvent.DOCUMENT_CHECK): VALI,
    (RECUP, IdentityEvent.DOCUMENT_CHECK): QUAL,
    (VALI, IdentityEvent.DOCUMENT_CHECK): VALI,
    (QUAL, IdentityEvent.DOCUMENT_CHECK): QUAL,
    (PROV, IdentityEvent.STRICT_TRAIT_CHANGE): PROV,
    (RECUP, IdentityEvent.STRICT_TRAIT_CHANGE): PROV,
    (VALI, IdentityEvent.STRICT_TRAIT_CHANGE): PROV,
    (QUAL, IdentityEvent.STRICT_TRAIT_CHANGE): PROV,
}

WRAPPERS = {
    IdentityEvent.INSI_MATCH: after_insi_match,
    IdentityEvent.INSI_NO_MATCH: after_insi_no_match,
    IdentityEvent.DOCUMENT_CHECK: lambda s: after_document_check(s, HighTrustDocument.PASSPORT),
    IdentityEvent.STRICT_TRAIT_CHANGE: after_strict_trait_change,
}


def test_labels() -> None:
    assert [s.label for s in IdentityStatus] == [
        "Identité provisoire",
        "Identité récupérée",
        "Identité validée",
        "Identité qualifiée",
    ]
    assert [s.value for s in IdentityStatus] == ["PROV", "RECUP", "VALI", "QUAL"]


def test_table_covers_every_pair() -> None:
    pairs = set(itertools.product(IdentityStatus, IdentityEvent))
    assert set(TRANSITIONS) == pairs
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("status", "event"), sorted(EXPECTED, key=str))
def test_every_transition_through_public_function(status: IdentityStatus, event: IdentityEvent) -> None:
    before = state(status)
    after = WRAPPERS[event](before)
    target = EXPECTED[(status, event)]
    assert after.status is target
    assert after.insi_verified is (target in (RECUP, QUAL))
    if target in (PROV, RECUP):
        assert after.document_checked is None
    elif event is IdentityEvent.DOCUMENT_CHECK:
        assert after.document_checked == "PASSEPORT"
    else:
        assert after.document_checked == before.document_checked
    assert before.status is status  # the input state is never mutated


def test_initial_state() -> None:
    assert initial_state() == IdentityState(PROV, insi_verified=False, document_checked=None)


def test_full_path_to_qualified_both_orders() -> None:
    via_insi = after_document_check(after_insi_match(initial_state()), "cni")
    via_doc = after_insi_match(after_document_check(initial_state(), "CNI"))
    assert via_insi == via_doc == IdentityState(QUAL, True, "CNI")
    assert may_transmit_ins(via_insi.status)


def test_trait_change_resets_everything() -> None:
    assert after_strict_trait_change(state(QUAL)) == initial_state()


@pytest.mark.parametrize("status", list(IdentityStatus))
@pytest.mark.parametrize("document", [d.value for d in LowTrustDocument] + ["PERMIS_PECHE"])
def test_low_trust_document_refused_in_every_status(status: IdentityStatus, document: str) -> None:
    with pytest.raises(IdentityError) as exc:
        after_document_check(state(status), document)
    assert exc.value.code == "RNIV_DOCUMENT"
    assert exc.value.field == "document"
    assert "haut niveau de confiance" in exc.value.message


@pytest.mark.parametrize("document", ["", "  "])
def test_document_check_without_document(document: str) -> None:
    with pytest.raises(IdentityError) as exc:
        after_document_check(initial_state(), document)
    assert exc.value.code == "RNIV_DOCUMENT"
    with pytest.raises(IdentityError):
        apply(initial_state(), IdentityEvent.DOCUMENT_CHECK)


def test_unknown_event_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        apply(initial_state(), "FUSION")
    assert exc.value.code == "RNIV_TRANSITION"


def test_apply_accepts_event_strings() -> None:
    assert apply(initial_state(), "INSI_MATCH").status is RECUP


def test_refused_table_entry_raises_transition_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # No pair is refused by the RNIV matrix today; this checks the mechanism a local rule would use.
    table = dict(TRANSITIONS)
    table[(QUAL, IdentityEvent.STRICT_TRAIT_CHANGE)] = None
    monkeypatch.setattr(rniv, "TRANSITIONS", table)
    monkeypatch.setattr(
        rniv, "_REFUSAL_REASONS", {(QUAL, IdentityEvent.STRICT_TRAIT_CHANGE): "politique locale"}
    )
    with pytest.raises(IdentityError) as exc:
        after_strict_trait_change(state(QUAL))
    assert exc.value.code == "RNIV_TRANSITION"
    assert "politique locale" in exc.value.message and "Identité qualifiée" in exc.value.message


def test_documents() -> None:
    assert {d.value for d in HighTrustDocument} == {
        "PASSEPORT",
        "CNI",
        "TITRE_SEJOUR",
        "ECNI",
        "IDN_LAPOSTE",
        "APP_CV",
        "LIVRET_FAMILLE",
    }
    assert all(is_high_trust(d) for d in HighTrustDocument)
    assert not any(is_high_trust(d) for d in LowTrustDocument)
    assert not is_high_trust("cni")  # codes are exact; the transition functions normalise case
    assert HighTrustDocument.PASSPORT.label == "Passeport"
    assert document_label("CARTE_VITALE") == "Carte Vitale"
    assert document_label("XYZ") == "XYZ"
    assert all(d.label for d in HighTrustDocument) and all(d.label for d in LowTrustDocument)


@pytest.mark.parametrize(
    ("status", "insi", "document"),
    [
        (PROV, True, None),
        (RECUP, False, None),
        (VALI, True, None),
        (QUAL, False, "CNI"),
        (PROV, False, "CNI"),
        (RECUP, True, "PASSEPORT"),
    ],
)
def test_inconsistent_state_refused(status: IdentityStatus, insi: bool, document: str | None) -> None:
    with pytest.raises(IdentityError) as exc:
        IdentityState(status, insi, document)
    assert exc.value.code == "RNIV_STATE"


def test_state_with_low_trust_document_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        IdentityState(VALI, False, "CARTE_VITALE")
    assert exc.value.code == "RNIV_DOCUMENT"


@pytest.mark.parametrize("status", list(IdentityStatus))
def test_from_declared_infers_criteria(status: IdentityStatus) -> None:
    s = from_declared(status)
    assert s.status is status
    assert s.insi_verified is (status in (RECUP, QUAL))
    assert s.document_checked is None
    assert from_declared(status.value.lower()).status is status


def test_from_declared_qual_implies_both() -> None:
    assert from_declared("QUAL", document="passeport") == IdentityState(QUAL, True, "PASSEPORT")
    assert from_declared(QUAL, insi_verified=True) == IdentityState(QUAL, True, None)


def test_from_declared_contradictions() -> None:
    with pytest.raises(IdentityError) as exc:
        from_declared(QUAL, insi_verified=False)
    assert exc.value.code == "RNIV_STATE"
    with pytest.raises(IdentityError) as exc:
        from_declared(PROV, insi_verified=True)
    assert exc.value.code == "RNIV_STATE"
    with pytest.raises(IdentityError) as exc:
        from_declared(RECUP, document="CNI")
    assert exc.value.code == "RNIV_STATE"
    with pytest.raises(IdentityError) as exc:
        from_declared(VALI, document="CARTE_VITALE")
    assert exc.value.code == "RNIV_DOCUMENT"
    with pytest.raises(IdentityError) as exc:
        from_declared("VALIDE")
    assert exc.value.code == "RNIV_STATE"


def test_may_transmit_ins_only_when_qualified() -> None:
    assert [may_transmit_ins(s) for s in IdentityStatus] == [False, False, False, True]
    assert may_transmit_ins("QUAL") and not may_transmit_ins("RECUP")


events = st.sampled_from(list(IdentityEvent))


@given(st.lists(events, max_size=30))
def test_property_any_event_sequence_keeps_state_consistent(seq: list[IdentityEvent]) -> None:
    s = initial_state()
    for ev in seq:
        s = apply(s, ev, "CNI" if ev is IdentityEvent.DOCUMENT_CHECK else None)
        # The status is always exactly the combination of its two criteria.
        assert s.insi_verified is s.status.insi_verified
        assert (s.document_checked is not None) is s.status.document_checked
    if seq and seq[-1] is IdentityEvent.STRICT_TRAIT_CHANGE:
        assert s == initial_state()
    if may_transmit_ins(s.status):
        assert IdentityEvent.INSI_MATCH in seq and IdentityEvent.DOCUMENT_CHECK in seq
