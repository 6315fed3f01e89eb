"""flows adapter of vitedit-ops: the Prefect flows that compose the engine (``vitedit_ops``),
the production store (``monitoring``) and the registry (``registry``).

``nightly-edit`` (:mod:`flows.nightly`) turns yesterday's production errors into a gated,
registered challenger; ``meta-train`` (:mod:`flows.metatrain`) and ``build-suite``
(:mod:`flows.suites`) start a lineage; :mod:`flows.deploy` and ``prefect.yaml`` schedule them;
:mod:`flows.demo` is ``make demo``. Nothing in ``vitedit_ops``, ``monitoring`` or ``registry``
imports this package.
"""
