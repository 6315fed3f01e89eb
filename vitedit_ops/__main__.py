"""``python -m vitedit_ops`` == ``vitedit-ops``."""
from .cli import main

main()
