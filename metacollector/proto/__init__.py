"""Generated protobuf module for proto/metadata.proto (regenerate with `python -m metacollector.proto.generate`)."""
