"""Generated gRPC stubs of protos/arcly/relay/v1 (make proto)."""
