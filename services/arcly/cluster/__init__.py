"""The cluster: Redis registry (ownership, nodes, streams, events) and the gRPC relay."""
