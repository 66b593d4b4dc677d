"""Discovery documents: enough for kubectl (get, create -f, apply -f, label, delete, get -w),
for every group the store serves."""

from __future__ import annotations

import msgspec

from metacollector.emulator.store import GROUP_VERSIONS, RESOURCES, ResourceInfo

_encode = msgspec.json.Encoder().encode
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource(info: ResourceInfo) -> dict[str, object]:
    return {
        "name": info.plural,
        "singularName": info.kind.lower(),
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": VERBS,
        "shortNames": list(info.short_names),
    }


def _resource_list(group_version: str, group: str) -> bytes:
    resources = [_resource(r) for r in RESOURCES.values() if r.group == group]
    if not group:
        resources.append(
            {
                "name": "pods/status",
                "singularName": "",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get", "patch", "update"],
            }
        )
    return _encode(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }
    )


def _group(name: str, version: str) -> dict[str, object]:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


_GROUPS = [_group(group, version) for group, version in GROUP_VERSIONS.items() if group]
DOCUMENTS = {
    "/api": _encode({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    "/api/v1": _resource_list("v1", ""),
    "/apis": _encode({"kind": "APIGroupList", "apiVersion": "v1", "groups": _GROUPS}),
    **{
        f"/apis/{g['name']}": _encode({"kind": "APIGroup", "apiVersion": "v1", **g})
        for g in _GROUPS
    },
    **{
        f"/apis/{group}/{version}": _resource_list(f"{group}/{version}", group)
        for group, version in GROUP_VERSIONS.items()
        if group
    },
    "/version": _encode(
        {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0-metacollector-emulator",
            "platform": "linux/amd64",
            "goVersion": "emulated",
            "compiler": "none",
            "buildDate": "2026-11-22T00:00:00Z",
            "gitCommit": "",
            "gitTreeState": "clean",
        }
    ),
}


def document(path: str) -> bytes | None:
    return DOCUMENTS.get(path.rstrip("/") or "/")


def _openapi_v3(group: str, version: str) -> bytes:
    """A minimal OpenAPI v3 document: enough for kubectl to see that the server validates
    fields itself (fieldValidation) and skip client-side schema validation."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    param = [
        {
            "name": "fieldValidation",
            "in": "query",
            "schema": {"type": "string"},
            "uniqueItems": True,
        }
    ]
    paths: dict[str, object] = {}
    for info in RESOURCES.values():
        if info.group != group:
            continue
        gvk = {"group": group, "version": version, "kind": info.kind}
        ns = "/namespaces/{namespace}" if info.namespaced else ""
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": param, "responses": {}}
        paths[f"{prefix}{ns}/{info.plural}"] = {"post": {**op, "x-kubernetes-action": "post"}}
        paths[f"{prefix}{ns}/{info.plural}/{{name}}"] = {
            "put": {**op, "x-kubernetes-action": "put"},
            "patch": {**op, "x-kubernetes-action": "patch"},
        }
    return _encode(
        {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.31.0"},
            "paths": paths,
            "components": {"schemas": {}},
        }
    )


def _openapi_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


DOCUMENTS["/openapi/v3"] = _encode(
    {
        "paths": {
            _openapi_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_openapi_path(g, v)}?hash=1"}
            for g, v in GROUP_VERSIONS.items()
        }
    }
)
for _g, _v in GROUP_VERSIONS.items():
    DOCUMENTS[f"/openapi/v3/{_openapi_path(_g, _v)}"] = _openapi_v3(_g, _v)
