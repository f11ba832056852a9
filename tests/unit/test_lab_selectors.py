"""Label and field selector parsing and matching of the lab API server."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router_lab.selectors import (
    FieldRequirement,
    LabelRequirement,
    SelectorError,
    field_value,
    object_matcher,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "front", "example.com/team": "net", "weight": "7", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db, cache)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=front", True),
        ("app=web, tier=back", False),
        ("example.com/team=net", True),
        ("empty=", True),
        ("empty", True),
        ("app in (web,)", True),
        ("weight>5", True),
        ("weight<5", False),
        ("app>5", False),
        ("  app = web ,  !missing  ", True),
    ],
)
def test_label_selector_matches(selector: str, matches: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("selector", "requirements"),
    [
        ("a=b", [LabelRequirement("a", "=", ("b",))]),
        ("a==b", [LabelRequirement("a", "=", ("b",))]),
        ("a!=b", [LabelRequirement("a", "!=", ("b",))]),
        ("a in (z,y)", [LabelRequirement("a", "in", ("y", "z"))]),
        ("a notin (y)", [LabelRequirement("a", "notin", ("y",))]),
        ("a", [LabelRequirement("a", "exists")]),
        ("!a", [LabelRequirement("a", "!exists")]),
        ("a,!b", [LabelRequirement("a", "exists"), LabelRequirement("b", "!exists")]),
    ],
)
def test_label_selector_parses(selector: str, requirements: list[LabelRequirement]) -> None:
    assert list(parse_label_selector(selector).requirements) == requirements


@pytest.mark.parametrize(
    "selector",
    [
        "a=b=c",
        "a in b",
        "a in ()",
        "a in (b",
        "=b",
        "a,",
        ",a",
        "!",
        "a b",
        "a>b",
        "-a=b",
        "a=-b",
        "a/b/c=d",
        "x" * 64 + "=v",
        "a=" + "v" * 64,
        "a notin",
        "!a=b",
    ],
)
def test_label_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_label_selector_matches_none_labels() -> None:
    assert parse_label_selector("!a").matches(None)
    assert not parse_label_selector("a").matches(None)


POD = {
    "metadata": {"name": "p1", "namespace": "ns1"},
    "spec": {"nodeName": "node-a", "hostNetwork": True},
    "status": {"phase": "Running"},
}
POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.hostNetwork")


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("metadata.name=p1", True),
        ("metadata.name==p1", True),
        ("metadata.name!=p1", False),
        ("metadata.namespace=ns1,spec.nodeName=node-a", True),
        ("spec.nodeName=node-b", False),
        ("spec.nodeName!=node-b", True),
        ("spec.hostNetwork=true", True),
        ("spec.nodeName=", False),
    ],
)
def test_field_selector_matches(selector: str, matches: bool) -> None:
    parsed = parse_field_selector(selector, POD_FIELDS)
    assert parsed.matches_object(POD) is matches


@pytest.mark.parametrize(
    ("selector", "requirement"),
    [
        (r"metadata.name=a\,b", FieldRequirement("metadata.name", "=", "a,b")),
        (r"metadata.name!=a\=b", FieldRequirement("metadata.name", "!=", "a=b")),
        ("metadata.name = x ", FieldRequirement("metadata.name", "=", "x")),
    ],
)
def test_field_selector_escapes(selector: str, requirement: FieldRequirement) -> None:
    assert parse_field_selector(selector, POD_FIELDS).requirements == (requirement,)


@pytest.mark.parametrize(
    "selector", ["status.phase=Running", "metadata.name", "metadata.name=a,", r"metadata.name=\x"]
)
def test_field_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_field_selector(selector, POD_FIELDS)


def test_field_value_paths() -> None:
    assert field_value(POD, "spec.nodeName") == "node-a"
    assert field_value(POD, ("spec", "nodeName")) == "node-a"
    assert field_value(POD, "spec.missing") == ""
    assert field_value(POD, "spec.nodeName.deeper") == ""
    assert field_value({"a": 3}, "a") == "3"


def test_object_matcher_combines() -> None:
    match = object_matcher(
        parse_label_selector("app=web"), parse_field_selector("metadata.name=p1", POD_FIELDS)
    )
    assert match({"app": "web"}, {"metadata.name": "p1"})
    assert not match({"app": "web"}, {"metadata.name": "p2"})
    assert not match({"app": "db"}, {"metadata.name": "p1"})


# -- property tests ------------------------------------------------------------------------------

_alnum = st.sampled_from("abcxyz019")
_inner = st.sampled_from("abc09-_.")
names = st.builds(
    lambda first, mid, last: first + mid + last if mid or last else first,
    _alnum,
    st.text(_inner, max_size=6),
    st.one_of(st.just(""), _alnum),
).filter(lambda s: s[-1].isalnum())
keys = st.one_of(names, st.builds(lambda p, n: f"{p}.io/{n}", st.sampled_from("abk"), names))
label_sets = st.dictionaries(keys, st.one_of(st.just(""), names), max_size=4)


@st.composite
def requirements(draw: st.DrawFn) -> LabelRequirement:
    key = draw(keys)
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!exists"]))
    if op in ("=", "!="):
        return LabelRequirement(key, op, (draw(names),))
    if op in ("in", "notin"):
        values = draw(st.lists(names, min_size=1, max_size=3, unique=True))
        return LabelRequirement(key, op, tuple(sorted(values)))
    return LabelRequirement(key, op)


def render(req: LabelRequirement, spaced: bool) -> str:
    sp = " " if spaced else ""
    if req.op == "exists":
        return req.key
    if req.op == "!exists":
        return f"!{req.key}"
    if req.op in ("in", "notin"):
        return f"{req.key} {req.op} ({','.join(req.values)})"
    return f"{req.key}{sp}{req.op}{sp}{req.values[0]}"


def reference_match(req: LabelRequirement, labels: dict[str, str]) -> bool:
    present = req.key in labels
    value = labels.get(req.key)
    return {
        "exists": present,
        "!exists": not present,
        "=": present and value == req.values[0],
        "!=": not present or value != req.values[0],
        "in": present and value in req.values,
        "notin": not present or value not in req.values,
    }[req.op]


@given(st.lists(requirements(), min_size=1, max_size=4), st.booleans(), label_sets)
def test_label_selector_round_trip_and_semantics(
    reqs: list[LabelRequirement], spaced: bool, labels: dict[str, str]
) -> None:
    text = (", " if spaced else ",").join(render(r, spaced) for r in reqs)
    parsed = parse_label_selector(text)
    assert list(parsed.requirements) == reqs
    assert parsed.matches(labels) == all(reference_match(r, labels) for r in reqs)


@given(st.text(max_size=30))
def test_label_selector_parser_only_raises_selector_error(text: str) -> None:
    with contextlib.suppress(SelectorError):
        parse_label_selector(text)


@given(st.text(max_size=30))
def test_field_selector_parser_only_raises_selector_error(text: str) -> None:
    with contextlib.suppress(SelectorError):
        parse_field_selector(text, POD_FIELDS)
