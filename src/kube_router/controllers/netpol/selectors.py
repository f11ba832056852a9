"""Kubernetes label selectors (``metav1.LabelSelector``) as NetworkPolicy uses them.

A selector matches when every ``matchLabels`` pair and every ``matchExpressions`` requirement
holds; the empty selector matches everything. A missing (``None``) selector in a policy peer means
"this field is not present", which is the caller's business: :func:`matches` takes a selector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from kube_router.k8s.models import LabelSelector, LabelSelectorRequirement

IN: Final = "In"
NOT_IN: Final = "NotIn"
EXISTS: Final = "Exists"
DOES_NOT_EXIST: Final = "DoesNotExist"
OPERATORS: Final = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)


def selector_error(selector: LabelSelector) -> str | None:
    """Why the selector is invalid (as the API server would refuse it), or None if it is valid."""
    for req in selector.match_expressions:
        if req.operator not in OPERATORS:
            return f"label selector: unknown operator {req.operator!r} for key {req.key!r}"
        if not req.key:
            return "label selector: a requirement has an empty key"
        if req.operator in (IN, NOT_IN) and not req.values:
            return f"label selector: {req.operator} on key {req.key!r} needs values"
        if req.operator in (EXISTS, DOES_NOT_EXIST) and req.values:
            return f"label selector: {req.operator} on key {req.key!r} takes no values"
    return None


def _requirement_holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == IN:
        return present and labels[req.key] in req.values
    if req.operator == NOT_IN:
        return not present or labels[req.key] not in req.values
    if req.operator == EXISTS:
        return present
    if req.operator == DOES_NOT_EXIST:
        return not present
    raise ValueError(f"unknown label selector operator {req.operator!r}")


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when ``labels`` satisfy ``selector``. Raises ValueError on an unknown operator."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    return all(_requirement_holds(req, labels) for req in selector.match_expressions)
