"""Label selector matching: examples, and a property test against a set-based reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.controllers.netpol.selectors import matches, selector_error
from kube_router.k8s.models import LabelSelector, LabelSelectorRequirement

KEYS = st.sampled_from(["app", "tier", "env"])
VALUES = st.sampled_from(["a", "b", "c"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=3)


def req(key: str, op: str, *values: str) -> LabelSelectorRequirement:
    return LabelSelectorRequirement(key=key, operator=op, values=list(values))


@st.composite
def requirements(draw: st.DrawFn) -> LabelSelectorRequirement:
    op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
    values = draw(st.lists(VALUES, min_size=1, max_size=3)) if op in ("In", "NotIn") else []
    return LabelSelectorRequirement(key=draw(KEYS), operator=op, values=values)


SELECTORS = st.builds(
    LabelSelector,
    match_labels=st.dictionaries(KEYS, VALUES, max_size=2),
    match_expressions=st.lists(requirements(), max_size=3),
)


def reference(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """Selector semantics written as set operations over (key, value) pairs."""
    pairs = set(labels.items())
    if not set(selector.match_labels.items()) <= pairs:
        return False
    for r in selector.match_expressions:
        allowed = {(r.key, v) for v in r.values}
        ok = {
            "In": bool(pairs & allowed),
            "NotIn": not (pairs & allowed),
            "Exists": r.key in labels,
            "DoesNotExist": r.key not in labels,
        }[r.operator]
        if not ok:
            return False
    return True


@given(SELECTORS, LABELS)
def test_matches_the_reference(selector: LabelSelector, labels: dict[str, str]) -> None:
    assert selector_error(selector) is None
    assert matches(selector, labels) == reference(selector, labels)


@given(LABELS)
def test_empty_selector_matches_everything(labels: dict[str, str]) -> None:
    assert matches(LabelSelector(), labels)


@given(SELECTORS, LABELS, KEYS, VALUES)
def test_adding_a_requirement_only_narrows(
    selector: LabelSelector, labels: dict[str, str], key: str, value: str
) -> None:
    narrower = LabelSelector(
        match_labels=selector.match_labels,
        match_expressions=[*selector.match_expressions, req(key, "In", value)],
    )
    assert not matches(narrower, labels) or matches(selector, labels)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (LabelSelector(match_labels={"app": "a"}), {"app": "a", "x": "y"}, True),
        (LabelSelector(match_labels={"app": "a"}), {"app": "b"}, False),
        (LabelSelector(match_expressions=[req("app", "NotIn", "a")]), {}, True),
        (LabelSelector(match_expressions=[req("app", "In", "a", "b")]), {"app": "b"}, True),
        (LabelSelector(match_expressions=[req("app", "Exists")]), {"app": ""}, True),
        (LabelSelector(match_expressions=[req("app", "DoesNotExist")]), {"app": ""}, False),
    ],
)
def test_examples(selector: LabelSelector, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


@pytest.mark.parametrize(
    "requirement",
    [req("app", "Equals", "a"), req("app", "In"), req("app", "Exists", "a"), req("", "Exists")],
)
def test_invalid_selectors_are_reported(requirement: LabelSelectorRequirement) -> None:
    selector = LabelSelector(match_expressions=[requirement])
    assert selector_error(selector) is not None


def test_unknown_operator_raises_when_matched() -> None:
    with pytest.raises(ValueError, match="operator"):
        matches(LabelSelector(match_expressions=[req("app", "Equals", "a")]), {"app": "a"})
