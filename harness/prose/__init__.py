"""Numbers → sentences: the findings text, formatted page tables, and the README's generated blocks.

Imports :mod:`harness.analysis` and the run side, never :mod:`harness.plots` or :mod:`harness.book`.
"""
