"""A Kubernetes API server emulator: product code for the demo, the tests and the benchmarks.

Held to the real API server's documented behaviour for everything the collector and standard
clients (kubectl included) rely on: REST verbs, discovery, list pagination with consistent
snapshots, watches with bookmarks and 410 expiry, selectors, metadata-only responses.
"""
