"""Why things end, where code decides on it.

Reasons are mostly words for people (logs, spans, the API: "unpublished", "kicked via API by
…"), but a few steer control flow: a subscriber cut for being too slow loses its backlog, the
relay answers it with ``RESOURCE_EXHAUSTED``, its span is an error. Those are members here, and
code compares with the member, never with text. A member *is* its text (``StrEnum``), so what
people read stays the same.
"""

from __future__ import annotations

import enum


class CloseReason(enum.StrEnum):
    def __repr__(self) -> str:  # logs write reasons with %r: 'shutdown', as before
        return repr(self.value)

    SLOW_VIEWER = "slow viewer"
    """A subscriber that kept falling behind (or whose socket stayed blocked) was cut."""
    CLIENT_CLOSED = "client closed"
    """The client went away or stopped on its own."""
    SHUTDOWN = "shutdown"
    """The node is stopping."""
    OWNERSHIP_LOST = "ownership lost"
    """Another node claimed the key (after this node's registry session lapsed)."""
    SESSION_LOST = "session lost"
    """This node could not renew its registry session in time: it may not own anything."""
    RELEASED = "released by the operator"
    """The operator released the key (an idle stream): the stream is over."""
    REPLACED = "replaced: the publisher reconnected"
    """A silent publisher was replaced by a new publish of the same key (a broadcaster that
    reconnected before its old connection was noticed dead)."""
    TAKEN_OVER = "taken over"
    """A publisher with a takeover credential replaced the live one."""


def moves_stream(reason: str) -> bool:
    """A publish that ended for ``reason`` goes on elsewhere (or will): edges wait for its next
    owner rather than end the stream for their viewers."""
    return reason in (CloseReason.SHUTDOWN, CloseReason.OWNERSHIP_LOST, CloseReason.SESSION_LOST,
                      CloseReason.REPLACED, CloseReason.TAKEN_OVER)
