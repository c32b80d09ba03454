"""The benchmark engine (issue 6): datasets, prompt protocols, metrics, runner, report.

Nothing here prints; the ``autoseg bench`` command (:mod:`autoprompt_seg.cli.bench`) is
the only user-facing entry point.
"""
