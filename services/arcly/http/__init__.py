"""HTTP: a small sans-I/O request parser and the node's HTTP listener (HTTP-FLV, health)."""
