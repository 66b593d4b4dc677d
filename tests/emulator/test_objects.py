"""Stored objects beyond the watched kinds: Leases (leader election), the RBAC kinds and
ServiceAccounts of k8s/, with the real server's status codes and Status bodies; and
``kubectl apply -f k8s/`` against the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from metacollector.emulator.inprocess import running_emulator
from tests.support.emulator_api import Api, kubectl, needs_kubectl
from tests.support.env import needs_emulator as emulator_only

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
K8S = Path(__file__).resolve().parents[2] / "k8s"
SMP = {"Content-Type": "application/strategic-merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def lease(name: str, holder: str, rv: str = "", renew: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if rv:
        meta["resourceVersion"] = rv
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "leaseTransitions": 0,
            "renewTime": f"2026-12-01T00:00:{renew:02d}.000000Z",
        },
    }


def assert_status(body: dict[str, Any], code: int, reason: str, name: str, message: str) -> None:
    """The Status body a real API server sends for an error about one Lease."""
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
        "code": code,
    }


async def test_leases_create_get_update_list_with_conflicts(api: Api) -> None:
    ns = await api.create_ns()
    base = LEASES.format(ns=ns)
    missing = await api.client.get(f"{base}/election")
    assert missing.status_code == 404
    assert_status(
        missing.json(),
        404,
        "NotFound",
        "election",
        'leases.coordination.k8s.io "election" not found',
    )

    created = await api.client.post(base, json=lease("election", "replica-a"))
    assert created.status_code == 201, created.text
    first = created.json()
    assert first["kind"] == "Lease" and first["metadata"]["namespace"] == ns
    assert first["metadata"]["uid"] and first["metadata"]["resourceVersion"]
    dup = await api.client.post(base, json=lease("election", "replica-b"))
    assert dup.status_code == 409
    assert_status(
        dup.json(),
        409,
        "AlreadyExists",
        "election",
        'leases.coordination.k8s.io "election" already exists',
    )

    got = (await api.client.get(f"{base}/election")).json()
    assert got == first
    rv = first["metadata"]["resourceVersion"]
    # two replicas renew from the same version: the first write wins, the second conflicts
    renewed = await api.client.put(f"{base}/election", json=lease("election", "replica-a", rv, 2))
    assert renewed.status_code == 200, renewed.text
    assert int(renewed.json()["metadata"]["resourceVersion"]) > int(rv)
    assert renewed.json()["metadata"]["uid"] == first["metadata"]["uid"]
    stolen = await api.client.put(f"{base}/election", json=lease("election", "replica-b", rv, 3))
    assert stolen.status_code == 409
    assert_status(
        stolen.json(),
        409,
        "Conflict",
        "election",
        'Operation cannot be fulfilled on leases.coordination.k8s.io "election": the object has '
        "been modified; please apply your changes to the latest version and try again",
    )
    now = (await api.client.get(f"{base}/election")).json()
    assert now["spec"]["holderIdentity"] == "replica-a"
    assert now["metadata"]["resourceVersion"] == renewed.json()["metadata"]["resourceVersion"]

    gone = await api.client.put(f"{base}/other", json=lease("other", "replica-a", rv))
    assert gone.status_code == 404 and gone.json()["reason"] == "NotFound"
    wrong_name = await api.client.put(f"{base}/election", json=lease("other", "replica-a"))
    assert wrong_name.status_code == 400 and wrong_name.json()["reason"] == "BadRequest"

    listed = await api.client.get(base)
    assert listed.status_code == 200
    body = listed.json()
    assert body["kind"] == "LeaseList" and body["apiVersion"] == "coordination.k8s.io/v1"
    assert [i["metadata"]["name"] for i in body["items"]] == ["election"]
    assert int(body["metadata"]["resourceVersion"]) >= int(now["metadata"]["resourceVersion"])


async def test_discovery_names_the_served_groups(api: Api) -> None:
    groups = {g["name"]: g for g in (await api.client.get("/apis")).json()["groups"]}
    served = {"apps", "coordination.k8s.io", "rbac.authorization.k8s.io", "policy"}
    assert served | {"networking.k8s.io"} <= set(groups)
    assert groups["coordination.k8s.io"]["preferredVersion"]["groupVersion"] == (
        "coordination.k8s.io/v1"
    )
    coordination = (await api.client.get("/apis/coordination.k8s.io/v1")).json()["resources"]
    leases = next(r for r in coordination if r["name"] == "leases")
    assert leases["kind"] == "Lease" and leases["namespaced"]
    assert {"create", "get", "list", "update", "watch"} <= set(leases["verbs"])
    rbac = {
        r["name"]: r
        for r in (await api.client.get("/apis/rbac.authorization.k8s.io/v1")).json()["resources"]
    }
    assert not rbac["clusterroles"]["namespaced"] and not rbac["clusterrolebindings"]["namespaced"]
    core = {r["name"]: r for r in (await api.client.get("/api/v1")).json()["resources"]}
    assert core["serviceaccounts"]["namespaced"]


async def test_the_kinds_of_k8s_round_trip(api: Api) -> None:
    """Every object in k8s/ that is not a watched kind: created, read back, deleted."""
    ns = await api.create_ns()
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    stored_only = [
        d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    assert {d["kind"] for d in stored_only} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    for doc in stored_only:
        group_version = doc["apiVersion"]
        prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        plural = doc["kind"].lower() + "s"
        doc["metadata"]["name"] = f"{ns}-{doc['metadata']['name']}"
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = ns
            collection = f"{prefix}/namespaces/{ns}/{plural}"
        else:
            collection = f"{prefix}/{plural}"
        r = await api.client.post(collection, json=doc)
        assert r.status_code == 201, r.text
        url = f"{collection}/{doc['metadata']['name']}"
        got = (await api.client.get(url)).json()
        assert got["kind"] == doc["kind"] and got["apiVersion"] == group_version
        for key in ("rules", "roleRef", "subjects"):
            assert got.get(key) == doc.get(key)
        assert (await api.client.delete(url)).status_code == 200
        assert (await api.client.get(url)).status_code == 404
    # a cluster-scoped kind has no namespaced URL
    r = await api.client.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/clusterroles")
    assert r.status_code == 404


async def test_strategic_merge_patch_merges_lists_by_key(api: Api) -> None:
    """kubectl apply/edit send strategic merge patches: a container named in the patch is merged
    with the stored one, not replaced by it."""
    ns = await api.create_ns()
    containers = [
        {"name": "one", "image": "x", "ports": [{"containerPort": 80}]},
        {"name": "two", "image": "y"},
    ]
    r = await api.deployment(ns, "d", containers, finalizers=["a"])
    assert r.status_code == 201, r.text
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [
                        {"name": "two"},
                        {"name": "one"},
                        {"name": "three"},
                    ],
                    "containers": [
                        {"name": "one", "args": ["--v"], "ports": [{"containerPort": 81}]},
                        {"name": "three", "image": "z"},
                    ],
                }
            }
        },
    }
    r = await api.client.patch(
        f"/apis/apps/v1/namespaces/{ns}/deployments/d", json=patch, headers=SMP
    )
    assert r.status_code == 200, r.text
    containers = r.json()["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["two", "one", "three"]
    one = containers[1]
    assert one["image"] == "x" and one["args"] == ["--v"]
    assert [p["containerPort"] for p in one["ports"]] == [80, 81]
    assert r.json()["metadata"]["finalizers"] == ["a", "b"]
    delete = {"spec": {"template": {"spec": {"containers": [{"name": "two", "$patch": "delete"}]}}}}
    r = await api.client.patch(
        f"/apis/apps/v1/namespaces/{ns}/deployments/d", json=delete, headers=SMP
    )
    assert [c["name"] for c in r.json()["spec"]["template"]["spec"]["containers"]] == [
        "one",
        "three",
    ]


async def test_json_patch(api: Api) -> None:
    """``kubectl patch --type=json`` (RFC 6902): the HA set-up's patch of the Deployment."""
    ns = await api.create_ns()
    r = await api.deployment(ns, "d", [{"name": "c", "image": "x", "args": ["run"]}])
    assert r.status_code == 201, r.text
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/d"
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname"}]
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 2},
        {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--leader-elect"},
        {"op": "add", "path": "/spec/template/spec/topologySpreadConstraints", "value": spread},
        {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels"},
        {"op": "remove", "path": "/metadata/labels"},
    ]
    r = await api.client.patch(path, content=json.dumps(ops), headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    spec = r.json()["spec"]
    assert spec["replicas"] == 2 and "labels" not in r.json()["metadata"]
    assert spec["template"]["spec"]["containers"][0]["args"] == ["run", "--leader-elect"]
    assert spec["template"]["spec"]["topologySpreadConstraints"] == spread
    rv = r.json()["metadata"]["resourceVersion"]
    for bad in (
        [{"op": "test", "path": "/spec/replicas", "value": 1}],  # it is 2 now
        [{"op": "remove", "path": "/spec/nothing"}],
        [{"op": "replace", "path": "/spec/replicas"}, {"op": "jump", "path": "/spec"}],
    ):
        r = await api.client.patch(path, content=json.dumps(bad), headers=JSON_PATCH)
        assert r.status_code == 422 and r.json()["reason"] == "Invalid", r.text
    got = (await api.client.get(path)).json()
    assert got["metadata"]["resourceVersion"] == rv and got["spec"]["replicas"] == 2


@pytest.mark.kubectl
@needs_kubectl
@emulator_only
async def test_kubectl_apply_k8s(tmp_path: Path) -> None:
    """``kubectl apply -f k8s/`` creates every object, a second apply changes nothing, and an
    apply of an edited copy changes only what was edited."""
    async with running_emulator(nodes=1, pods_per_node=1, tls=True) as emu, emu.client() as client:
        out = await kubectl(emu, "apply", "-f", str(K8S))
        kinds = {
            "namespace",
            "serviceaccount",
            "clusterrole.rbac.authorization.k8s.io",
            "clusterrolebinding.rbac.authorization.k8s.io",
            "service",
            "deployment.apps",
        }
        assert {line.split("/")[0] for line in out.splitlines()} >= kinds
        assert all(line.endswith(" created") for line in out.splitlines()), out
        again = await kubectl(emu, "apply", "-f", str(K8S))
        assert all(line.endswith(" unchanged") for line in again.splitlines()), again

        role = (
            await client.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/metacollector")
        ).json()
        assert role["rules"][0]["verbs"] == ["get", "list", "watch"]
        binding = (
            await client.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/metacollector")
        ).json()
        assert binding["subjects"][0]["name"] == "metacollector"
        sa = await client.get("/api/v1/namespaces/metacollector/serviceaccounts/metacollector")
        assert sa.status_code == 200

        edited = tmp_path / "k8s"
        edited.mkdir()
        for f in K8S.glob("*.yaml"):
            (edited / f.name).write_text(f.read_text())
        deployment = edited / "30-deployment.yaml"
        deployment.write_text(
            deployment.read_text().replace("--log-level=info", "--log-level=debug")
        )
        before = (
            await client.get("/apis/apps/v1/namespaces/metacollector/deployments/metacollector")
        ).json()
        out = await kubectl(emu, "apply", "-f", str(edited))
        assert "deployment.apps/metacollector configured" in out, out
        ha = '[{"op": "replace", "path": "/spec/replicas", "value": 2}]'
        out = await kubectl(
            emu,
            "-n",
            "metacollector",
            "patch",
            "deployment",
            "metacollector",
            "--type=json",
            "-p",
            ha,
        )
        assert "patched" in out, out
        after = (
            await client.get("/apis/apps/v1/namespaces/metacollector/deployments/metacollector")
        ).json()
        old, new = (d["spec"]["template"]["spec"]["containers"][0] for d in (before, after))
        assert new["args"] == [a.replace("info", "debug") for a in old["args"]] != old["args"]
        assert before["spec"]["replicas"] == 1 and after["spec"]["replicas"] == 2  # --type=json
        assert {k: v for k, v in new.items() if k != "args"} == {
            k: v for k, v in old.items() if k != "args"
        }
