"""Operator settings from the environment (the chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "arcly:"
    release: str = ""            # only Pods of this Helm release (all arcly Pods when empty)
    reap_interval: float = 10.0
    kube_url: str = ""           # tests: an API server to talk to instead of in-cluster login

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        defaults = cls()
        return cls(redis_url=env.get("ARCLY_REDIS_URL", defaults.redis_url),
                   redis_prefix=env.get("ARCLY_REDIS_PREFIX", defaults.redis_prefix),
                   release=env.get("ARCLY_RELEASE", ""),
                   reap_interval=float(env.get("ARCLY_OPERATOR_INTERVAL",
                                               defaults.reap_interval)),
                   kube_url=env.get("ARCLY_OPERATOR_KUBE_URL", ""))
