"""A self-healing operator for the kvstore example: ``python -m examples.kvstore.operator``.

``spec`` parses the declarative cluster spec, ``observe`` collects what is really running,
``reconcile.plan`` (a pure function) decides what to do about the difference, ``backend`` starts and
stops members as local processes, ``backup`` takes and restores snapshots and ``controller`` runs
the loop that ties them together. See docs/operator.md.
"""
