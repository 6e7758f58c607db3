"""The node: configuration (``config``: flags and ``ARCLY_*`` env), logging (``logs``), roles
and lifecycle (``server``: builds every piece once and runs it), the CLI (``cli``: ``arcly``).
Nothing imports this package; it imports everything else."""
