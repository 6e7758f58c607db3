"""The arcly operator (kopf): node lifecycle, scale-in by load, idle/orphan stream cleanup and
cluster status. Decisions are pure functions (``decisions``); handlers (``main``) are thin."""
