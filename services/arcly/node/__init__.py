"""The node: configuration, roles and the process entry point (``arcly``)."""
