"""The seven watched resources (SPEC section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The annotation on the bookmark that ends a streaming list's initial events.
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"

PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
PARTIAL_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" for core
    version: str
    plural: str
    metadata_only: bool

    @property
    def path(self) -> str:
        """Cluster-wide collection path, e.g. /apis/apps/v1/deployments."""
        prefix = "/api" if not self.group else f"/apis/{self.group}"
        return f"{prefix}/{self.version}/{self.plural}"

    def accept(self, watch: bool) -> str:
        if not self.metadata_only:
            return "application/json"
        return PARTIAL_ONE if watch else PARTIAL_LIST


RESOURCES: Final = (
    Resource("Pod", "", "v1", "pods", False),
    Resource("Namespace", "", "v1", "namespaces", True),
    Resource("Service", "", "v1", "services", False),
    Resource("ReplicationController", "", "v1", "replicationcontrollers", True),
    Resource("Deployment", "apps", "v1", "deployments", True),
    Resource("ReplicaSet", "apps", "v1", "replicasets", True),
    Resource("DaemonSet", "apps", "v1", "daemonsets", True),
)
