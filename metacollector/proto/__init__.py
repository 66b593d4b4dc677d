"""Generated protobuf module for proto/metadata.proto.

Regenerate with `python -m metacollector.proto.generate`.
"""
