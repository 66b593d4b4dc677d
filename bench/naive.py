"""Naive per-node agents for bench/scale.py's offload phase: what Falco's old in-process client
did on every node - list and watch its own pods by field selector, plus namespaces, workloads
and services cluster-wide. Reads a JSON job on stdin: {"url", "token", "nodes": [...]}; runs
until stdin closes; prints {"event": "synced"} once every list is done."""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import httpx
import trio

CLUSTER_WIDE = [
    "/api/v1/namespaces",
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/replicasets",
    "/apis/apps/v1/daemonsets",
    "/api/v1/services",
    "/api/v1/replicationcontrollers",
]


async def list_and_watch(
    client: httpx.AsyncClient, path: str, params: dict[str, str], synced: list[int]
) -> None:
    r = await client.get(path, params={**params, "limit": "500"})
    body = r.json()
    rv = body["metadata"]["resourceVersion"]
    while body["metadata"].get("continue"):
        r = await client.get(
            path, params={**params, "limit": "500", "continue": body["metadata"]["continue"]}
        )
        body = r.json()
    synced[0] += 1
    while True:
        async with client.stream(
            "GET",
            path,
            params={
                **params,
                "watch": "1",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "600",
            },
        ) as w:
            async for line in w.aiter_lines():
                if line:
                    event = json.loads(line)
                    rv = event["object"].get("metadata", {}).get("resourceVersion", rv)


async def main() -> None:
    job: dict[str, Any] = json.loads(sys.stdin.readline())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    headers = {"Authorization": f"Bearer {job['token']}", "User-Agent": "naive-agent"}
    synced = [0]
    total = len(job["nodes"]) * (1 + len(CLUSTER_WIDE))
    async with trio.open_nursery() as nursery:
        for node in job["nodes"]:
            client = httpx.AsyncClient(
                base_url=job["url"],
                headers=headers,
                timeout=httpx.Timeout(60, read=None),
                limits=httpx.Limits(max_connections=10),
            )
            nursery.start_soon(
                list_and_watch,
                client,
                "/api/v1/pods",
                {"fieldSelector": f"spec.nodeName={node}"},
                synced,
            )
            for path in CLUSTER_WIDE:
                nursery.start_soon(list_and_watch, client, path, {}, synced)
        while synced[0] < total:
            await trio.sleep(0.1)
        print(json.dumps({"event": "synced"}), flush=True)
        await trio.wrap_file(sys.stdin).readline()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
