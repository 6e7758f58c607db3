"""Protocol implementations: each a sans-I/O core plus a thin asyncio adapter."""
