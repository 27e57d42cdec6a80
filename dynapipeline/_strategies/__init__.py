"""The strategies layer: asyncio execution strategies (execution.py) and cycle strategies (cycles.py)."""
