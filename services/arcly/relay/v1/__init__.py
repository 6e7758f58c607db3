"""Generated protobuf messages of protos/arcly/relay/v1 (``make proto``)."""
