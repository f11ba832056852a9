"""Discovery documents: /version, /api, /api/v1, /apis, /apis/{group}, /apis/{group}/{version}."""

from __future__ import annotations

from typing import Any

from kube_router_lab.resources import RESOURCES, ResourceInfo, groups

__all__ = ["VERSION", "api_group", "api_group_list", "api_resource_list", "api_versions"]

VERSION: dict[str, str] = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _resource_entries(info: ResourceInfo) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": info.name,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": list(info.verbs),
    }
    if info.short_names:
        main["shortNames"] = list(info.short_names)
    out = [main]
    if info.has_status:
        out.append(
            {
                "name": f"{info.name}/status",
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    return out


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group version, None when not served."""
    infos = [i for i in RESOURCES if i.group == group and i.version == version]
    if not infos:
        return None
    group_version = f"{group}/{version}" if group else version
    resources = [entry for info in infos for entry in _resource_entries(info)]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _group_doc(name: str, infos: list[ResourceInfo]) -> dict[str, Any]:
    versions = sorted({info.version for info in infos})
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> dict[str, Any]:
    docs = [_group_doc(name, infos) for name, infos in groups().items() if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": docs}


def api_group(name: str) -> dict[str, Any] | None:
    infos = groups().get(name)
    if not name or not infos:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, infos)}
