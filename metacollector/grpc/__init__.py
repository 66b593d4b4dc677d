"""gRPC over HTTP/2 (h2 + trio): sans-I/O framing, the server, the Watch handler, a client."""
