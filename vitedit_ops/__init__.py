"""vitedit-ops: learn where to edit a Vision Transformer, edit only there, gate and ship."""
__version__ = "0.1.0"
