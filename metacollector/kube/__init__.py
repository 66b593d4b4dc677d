"""Kubernetes access: configuration and auth, the watch-stream decoder, reflectors."""
