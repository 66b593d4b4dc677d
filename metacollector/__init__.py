"""metacollector: one central Kubernetes metadata collector for a cluster of Falco sensors."""

__version__ = "0.1.0"
