"""API errors as the real server reports them: a `Status` object with reason and code."""

from __future__ import annotations

from typing import Any

import msgspec

from kube_router_lab.resources import ResourceInfo

__all__ = [
    "ApiError",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "invalid",
    "method_not_allowed",
    "not_found",
    "path_not_found",
    "status_success",
    "unauthorized",
    "unsupported_media_type",
]


class ApiError(Exception):
    """An error the API server answers with a `Status` body and an HTTP status code."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The `Status` object for this error."""
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            out["details"] = self.details
        out["code"] = self.code
        return out

    def encode(self) -> bytes:
        return msgspec.json.encode(self.status())


def _details(info: ResourceInfo, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if info.group:
        details["group"] = info.group
    details["kind"] = info.name
    return details


def not_found(info: ResourceInfo, name: str) -> ApiError:
    msg = f'{info.group_resource} "{name}" not found'
    return ApiError(404, "NotFound", msg, _details(info, name))


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(info: ResourceInfo, name: str) -> ApiError:
    msg = f'{info.group_resource} "{name}" already exists'
    return ApiError(409, "AlreadyExists", msg, _details(info, name))


def conflict(info: ResourceInfo, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    msg = f'Operation cannot be fulfilled on {info.group_resource} "{name}": {why}'
    return ApiError(409, "Conflict", msg, _details(info, name))


def invalid(info: ResourceInfo, name: str, field: str, reason: str, detail: str) -> ApiError:
    """422 Invalid with one cause; `reason` like "FieldValueRequired"."""
    cause = {"reason": reason, "message": detail, "field": field}
    msg = f'{info.kind} "{name}" is invalid: {field}: {detail}'
    details: dict[str, Any] = {"name": name}
    if info.group:
        details["group"] = info.group
    details.update(kind=info.kind, causes=[cause])
    return ApiError(422, "Invalid", msg, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    msg = "the server does not allow this method on the requested resource"
    return ApiError(405, "MethodNotAllowed", msg, {})


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str, accepted: tuple[str, ...]) -> ApiError:
    msg = (
        f"the body of the request was in an unknown format ({content_type!r}) - "
        f"accepted media types include: {', '.join(accepted)}"
    )
    return ApiError(415, "UnsupportedMediaType", msg, {})


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def status_success(info: ResourceInfo, name: str, uid: str) -> dict[str, Any]:
    """The `Status` the server returns for a successful delete of a namespace."""
    details = _details(info, name)
    details["uid"] = uid
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }
