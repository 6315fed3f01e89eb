"""Option values checked against a registry when the option is parsed.

Editor names live in the editor registry, which imports torch; checking them only when
``--method`` is given keeps every other command (and ``--help``) as fast as before, while an
unregistered name is still refused at once with the names that are registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import typer


def one_of(what: str, load: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    """A typer ``parser`` accepting only the names ``load()`` returns."""
    def parse(value: str) -> str:
        names = list(load())
        if value not in names:
            raise typer.BadParameter(f"unknown {what} {value!r}; choose from "
                                     f"{', '.join(names)}")
        return value
    return parse


def _editors() -> list[str]:
    from ..editors import list_editors

    return list_editors()


def _optimizers() -> list[str]:
    from ..editors import OPTIMIZERS

    return list(OPTIMIZERS)


def _episode_kinds() -> list[str]:
    from ..episodes import EPISODES

    return EPISODES.names()


def _updater_kinds() -> list[str]:
    from .. import editors  # noqa: F401 - the kinds register where their editors are defined
    from ..learned_update import UPDATERS

    return UPDATERS.names()


EDITOR = one_of("editor", _editors)
EPISODE_KIND = one_of("episode kind", _episode_kinds)
OPTIMIZER = one_of("optimizer", _optimizers)
UPDATER_KIND = one_of("update network kind", _updater_kinds)
