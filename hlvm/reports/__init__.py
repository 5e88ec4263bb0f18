"""Reports of trained models: ``hlvm compare`` (:mod:`.compare`: one budget, one table),
``make results`` (:mod:`.results`: the zoo on full MNIST beside published numbers), their figures
(:mod:`.plots`) and the links from a report to every file written beside it (:mod:`.files`).

Every number in a report comes from :func:`hlvm.eval.score`.  The submodules are imported by name
(``from hlvm.reports.compare import run_compare``), so that reading one does not load the others.
"""

__all__: list[str] = []
