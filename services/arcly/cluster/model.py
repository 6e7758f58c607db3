"""The cluster's vocabulary: node roles and states, owners, node load. Plain values shared by
nodes, the registry and the operator. A member *is* its text (``StrEnum``): that text is what
Redis records, logs and the API carry."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class NodeRole(enum.StrEnum):
    SINGLE = "single"  # origin and edge in one process, no cluster
    ORIGIN = "origin"  # takes publishers, owns their keys, serves the relay
    EDGE = "edge"      # serves viewers from origins' relays

    @property
    def clustered(self) -> bool:
        return self is not NodeRole.SINGLE

    @property
    def takes_publishers(self) -> bool:
        return self is not NodeRole.EDGE


class NodeState(enum.StrEnum):
    READY = "ready"        # takes new sessions
    DRAINING = "draining"  # finishing the sessions it has, taking no new ones
    GONE = "gone"          # its Pod is deleted (the operator's word; never in a node record)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who publishes a key: the node, its fencing token, where to relay it from."""

    node_id: str
    token: int
    relay: str
    trace: str = ""  # the publish session's W3C traceparent
    session: str = ""  # the owner's node session (its keys are free once it is gone)


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node's heartbeat says about its load."""

    streams: int = 0
    viewers: int = 0
