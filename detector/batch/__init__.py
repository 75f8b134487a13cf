"""The batch wing: many sites over a catalog of scenes, one task per site, durable and resumable.

``detector batch`` stands beside ``detector run``: both orchestrate the same
scan and the same shared results (:mod:`detector.results`).  The entry
point is :func:`detector.batch.run.run_batch`; the modules are named for
what each owns (see the README's layout).
"""
