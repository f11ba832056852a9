"""JSON merge patch, strategic merge patch and JSON patch of the lab API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router_lab.patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    create_merge_patch,
)

# RFC 7386 appendix A examples.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert apply_merge_patch(target, patch) == result
    assert target == before  # never mutates its input


SVC = {
    "metadata": {"name": "s", "labels": {"a": "1"}, "finalizers": ["x"]},
    "spec": {
        "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53}],
        "selector": {"app": "web"},
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}},
}


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        # maps merge, null deletes
        ({"metadata": {"labels": {"b": "2", "a": None}}}, {"metadata.labels": {"b": "2"}}),
        # list of ports merges by port
        (
            {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}},
            {
                "spec.ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "dns", "port": 53},
                ]
            },
        ),
        # new key appended
        (
            {"spec": {"ports": [{"port": 443, "name": "https"}]}},
            {
                "spec.ports": [
                    {"name": "http", "port": 80},
                    {"name": "dns", "port": 53},
                    {"port": 443, "name": "https"},
                ]
            },
        ),
        # $patch: delete of a list item
        (
            {"spec": {"ports": [{"port": 53, "$patch": "delete"}]}},
            {"spec.ports": [SVC["spec"]["ports"][0]]},
        ),
        # $patch: replace of a whole list
        (
            {"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}},
            {"spec.ports": [{"port": 1}]},
        ),
        # $patch: replace of a map
        ({"spec": {"selector": {"x": "y", "$patch": "replace"}}}, {"spec.selector": {"x": "y"}}),
        # $patch: delete of a map
        ({"spec": {"selector": {"$patch": "delete"}}}, {"spec.selector": None}),
        # ingress merges by ip
        (
            {"status": {"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}]}}},
            {"status.loadBalancer.ingress": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}]},
        ),
        # finalizers are a merging scalar list
        ({"metadata": {"finalizers": ["y", "x"]}}, {"metadata.finalizers": ["x", "y"]}),
        (
            {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}},
            {"metadata.finalizers": []},
        ),
        # $setElementOrder is accepted and dropped
        (
            {"spec": {"$setElementOrder/ports": [{"port": 53}, {"port": 80}]}},
            {"spec.ports": SVC["spec"]["ports"]},
        ),
        # lists without a merge key are replaced
        ({"spec": {"externalIPs": ["9.9.9.9"]}}, {"spec.externalIPs": ["9.9.9.9"]}),
    ],
)
def test_strategic_merge_patch(patch: dict[str, Any], check: dict[str, Any]) -> None:
    before = copy.deepcopy(SVC)
    out = apply_strategic_merge_patch(SVC, patch)
    assert before == SVC
    for path, want in check.items():
        cur: Any = out
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        assert cur == want, path


def test_strategic_merge_containers_by_name() -> None:
    pod = {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}
    out = apply_strategic_merge_patch(
        pod, {"spec": {"containers": [{"name": "b", "image": "y:2"}]}}
    )
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "x:1"},
        {"name": "b", "image": "y:2"},
    ]


def test_strategic_merge_conditions_by_type() -> None:
    node = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    patch = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Net"}]}}
    out = apply_strategic_merge_patch(node, patch)
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "True"}, {"type": "Net"}]


@pytest.mark.parametrize("patch", [[1], "x", {"$patch": "bogus"}])
def test_strategic_merge_rejects(patch: Any) -> None:
    with pytest.raises(PatchError) as info:
        apply_strategic_merge_patch({"a": 1}, patch)
    assert info.value.bad_request


# RFC 6902 appendix A examples (a selection) plus error cases.
DOC = {"foo": "bar", "list": [1, 2, 3], "obj": {"a/b": 1, "m~n": 2}}


@pytest.mark.parametrize(
    ("ops", "result"),
    [
        ([{"op": "add", "path": "/baz", "value": "qux"}], {**DOC, "baz": "qux"}),
        ([{"op": "add", "path": "/list/1", "value": 9}], {**DOC, "list": [1, 9, 2, 3]}),
        ([{"op": "add", "path": "/list/-", "value": 4}], {**DOC, "list": [1, 2, 3, 4]}),
        ([{"op": "remove", "path": "/list/0"}], {**DOC, "list": [2, 3]}),
        ([{"op": "remove", "path": "/foo"}], {k: v for k, v in DOC.items() if k != "foo"}),
        ([{"op": "replace", "path": "/foo", "value": 1}], {**DOC, "foo": 1}),
        (
            [{"op": "replace", "path": "/obj/a~1b", "value": 3}],
            {**DOC, "obj": {"a/b": 3, "m~n": 2}},
        ),
        ([{"op": "remove", "path": "/obj/m~0n"}], {**DOC, "obj": {"a/b": 1}}),
        (
            [{"op": "move", "from": "/foo", "path": "/bar"}],
            {"bar": "bar", "list": [1, 2, 3], "obj": DOC["obj"]},
        ),
        ([{"op": "move", "from": "/list/0", "path": "/list/2"}], {**DOC, "list": [2, 3, 1]}),
        ([{"op": "copy", "from": "/list", "path": "/l2"}], {**DOC, "l2": [1, 2, 3]}),
        ([{"op": "test", "path": "/list", "value": [1, 2, 3]}], DOC),
        (
            [
                {"op": "test", "path": "/foo", "value": "bar"},
                {"op": "add", "path": "/x", "value": None},
            ],
            {**DOC, "x": None},
        ),
        ([{"op": "replace", "path": "", "value": [1]}], [1]),
    ],
)
def test_json_patch(ops: list[dict[str, Any]], result: Any) -> None:
    before = copy.deepcopy(DOC)
    assert apply_json_patch(DOC, ops) == result
    assert before == DOC


@pytest.mark.parametrize(
    ("ops", "bad_request"),
    [
        ([{"op": "test", "path": "/foo", "value": "baz"}], False),
        ([{"op": "test", "path": "/list/0", "value": True}], False),
        ([{"op": "remove", "path": "/nope"}], False),
        ([{"op": "replace", "path": "/nope", "value": 1}], False),
        ([{"op": "add", "path": "/list/7", "value": 1}], False),
        ([{"op": "add", "path": "/list/01", "value": 1}], False),
        ([{"op": "add", "path": "/a/b", "value": 1}], False),
        ([{"op": "move", "from": "/obj", "path": "/obj/x"}], False),
        ([{"op": "frob", "path": "/foo"}], True),
        ([{"op": "add", "path": "foo", "value": 1}], True),
        ([{"op": "add", "path": "/foo"}], True),
        (["add"], True),
        ({"op": "add"}, True),
    ],
)
def test_json_patch_errors(ops: Any, bad_request: bool) -> None:
    with pytest.raises(PatchError) as info:
        apply_json_patch(DOC, ops)
    assert info.value.bad_request is bad_request


def test_json_patch_is_atomic() -> None:
    doc = {"a": 1}
    with pytest.raises(PatchError):
        apply_json_patch(
            doc, [{"op": "add", "path": "/b", "value": 2}, {"op": "remove", "path": "/c"}]
        )
    assert doc == {"a": 1}


# -- property tests ------------------------------------------------------------------------------

scalars = st.one_of(st.integers(-5, 5), st.text("ab", max_size=2), st.booleans())
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text("abc", max_size=2), inner, max_size=3)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text("abcd", max_size=2), json_values, max_size=4)


@given(json_objects, json_objects)
def test_merge_patch_round_trip(source: dict[str, Any], target: dict[str, Any]) -> None:
    patch = create_merge_patch(source, target)
    assert apply_merge_patch(source, patch) == target


@given(json_objects)
def test_merge_patch_with_itself_is_identity(doc: dict[str, Any]) -> None:
    assert apply_merge_patch(doc, doc) == doc


@given(json_objects, json_objects)
def test_strategic_merge_equals_merge_patch_without_lists_of_known_fields(
    source: dict[str, Any], target: dict[str, Any]
) -> None:
    # Keys here are never in the merge-key tables, so strategic merge degrades to RFC 7386.
    patch = create_merge_patch(source, target)
    assert apply_strategic_merge_patch(source, patch) == apply_merge_patch(source, patch)


@given(json_objects, st.text("xyz", min_size=1, max_size=3), json_values)
def test_json_patch_add_then_remove_restores(doc: dict[str, Any], key: str, value: Any) -> None:
    path = "/" + key.replace("~", "~0").replace("/", "~1")
    added = apply_json_patch(doc, [{"op": "add", "path": path, "value": value}])
    assert apply_json_patch(added, [{"op": "test", "path": path, "value": value}]) == added
    if key not in doc:
        assert apply_json_patch(added, [{"op": "remove", "path": path}]) == doc


@given(json_objects)
def test_json_patch_test_whole_document(doc: dict[str, Any]) -> None:
    assert apply_json_patch(doc, [{"op": "test", "path": "", "value": doc}]) == doc
