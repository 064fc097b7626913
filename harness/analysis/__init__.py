"""Logs → numbers.  Pure functions of a grid's run logs and the factor files beside them; nothing trains,
nothing draws.  Imports the run side (``harness.logs``, ``config``, ``tasks``, ``protocol``, and for the
pretrained weights ``models``/``train``/``data``) and :mod:`lora`; never :mod:`harness.plots`,
:mod:`harness.prose` or :mod:`harness.book` (``pyproject.toml``'s import-linter contracts check it).

* :mod:`.runs`        a grid's logs read once → the runs table, each method's main lr, summaries;
* :mod:`.stats`       paired intervals, Holm, Spearman with bootstrap, mean ± sd formatting;
* :mod:`.findings`    paired-by-seed comparisons of one grid (round 1);
* :mod:`.weights`     the pretrained W a run starts from, its factor files, the initial A;
* :mod:`.spectra`     ΔW's spectrum and geometry per run and layer, subspace agreement between runs;
* :mod:`.geometry`    per-layer ΔW geometry and φ between runs (rank and intruder chapters);
* :mod:`.ranks`, :mod:`.intruders`, :mod:`.inits`, :mod:`.protocol_v2`   one chapter's numbers each;
* :mod:`.benchmark`   the one reader of the benchmark JSON files;
* :mod:`.throughput`, :mod:`.equivalence`   the speed page's tables and bf16 vs fp32 equivalence.
"""
