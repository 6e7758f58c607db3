"""Every Kubernetes API permission the operator uses — the chart's RBAC must grant exactly these
(tests/integration/test_chart.py compares them with the rendered Role and ClusterRole)."""

from __future__ import annotations

# (apiGroup, resource) -> verbs, in the operator's namespace.
NAMESPACED: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"get", "list", "watch", "patch"}),  # lifecycle + deletion cost
    ("", "events"): frozenset({"create"}),  # kopf posts what it did on the objects
    # their spec, by release; patch: an upgrade from 0.1 removes the old kopf finalizer
    ("arcly.io", "arclyclusters"): frozenset({"get", "list", "patch"}),
    ("arcly.io", "arclyclusters/status"): frozenset({"get", "patch"}),
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "patch"}),  # leadership
}
# Cluster-scoped: kopf discovers served resources by watching CRDs, and lists namespaces to
# find the ones it serves.
CLUSTER: dict[tuple[str, str], frozenset[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
    ("", "namespaces"): frozenset({"list", "watch"}),
}
