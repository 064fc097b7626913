"""Numbers → figures (and the tables ``harness figures`` writes beside them, with their manifest).

Imports :mod:`harness.analysis` and the run side, never :mod:`harness.prose` or :mod:`harness.book`.
:mod:`.style` is the one home of styling, saving and the manifest; :mod:`.forest` the one forest-plot drawing;
:mod:`.build` is ``python -m harness figures``.
"""
