"""The cluster: what origins, edges and the operator share.

- ``model`` — node roles and states, owners, node load (plain values);
- ``registry`` — the Redis layout and the client both sides use;
- ``node_registry`` — a node's side: ownership claims with fencing, heartbeat, state;
- ``cluster_view`` — the operator's side: every owner and node, force-release;
- ``relay_server`` / ``relay_client`` — the gRPC relay from origins to edges.
"""
