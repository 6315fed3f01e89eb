"""registry adapter of vitedit-ops: MLflow runs, registered versions, aliases.

Import the modules you need (``registry.mlflow_registry``, ``registry.loading``,
``registry.promotion``...); this package does not import MLflow by itself, so the CLI hook
``registry.cli:register`` stays cheap. See docs/registry.md.
"""
