"""serving adapter of vitedit-ops: ``vitedit-ops serve``, an HTTP service for
``models:/NAME@champion`` in onnxruntime.

Requests are batched across clients, every prediction is logged with its image through the
monitoring ``PredictionLogger``, reviewers' labels come back through ``POST /feedback``, and
the champion alias is followed: a new holder is verified as promotion verifies it before the
swap. ``import serving.cli`` (done by every ``vitedit-ops`` invocation) stays light: FastAPI,
onnxruntime and the stores are imported by the command. See docs/serving.md.
"""
