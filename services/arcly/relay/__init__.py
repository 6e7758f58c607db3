"""Generated protobuf messages of protos/arcly/relay/v1 (``make proto``); the service is
wired by hand in ``arcly.cluster.relay_server``/``relay_client``."""
