"""Run the ``vitedit-ops`` CLI in-process, as the CLI tests of every area do."""

from __future__ import annotations

import pytest

from vitedit_ops.cli import main


def run(argv, capsys) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``vitedit-ops argv``; a normal return is exit 0."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err
