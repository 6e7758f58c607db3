"""Auth providers for the kernel's ``AuthProvider`` extension point: allow-all (the laptop
default), static keys, HMAC-signed expiring tokens, HTTP webhooks — configured per app."""

from arcly.engine import AllowAll

from .config import AuthConfigError, PerApp, build_auth, load_auth
from .providers import SignedTokens, StaticKeys, Webhooks

__all__ = ["AllowAll", "AuthConfigError", "PerApp", "SignedTokens", "StaticKeys", "Webhooks",
           "build_auth", "load_auth"]
