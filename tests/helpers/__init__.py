"""Helpers shared by the tests; ``tests`` is on ``sys.path`` (``pythonpath`` in pyproject), so ``import helpers.pg``."""
