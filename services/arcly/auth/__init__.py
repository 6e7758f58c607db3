"""Auth providers. The single-node default allows everything; stricter ones plug into the
kernel's ``AuthProvider`` extension point."""

from arcly.engine import AllowAll

__all__ = ["AllowAll"]
