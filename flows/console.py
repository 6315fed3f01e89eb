"""What a flow command prints of Prefect's logging: warnings, one line each, and no failure
reports, so a failed night ends in the one line the CLI prints (``vitedit_ops.cli.main``).

Prefect's run loggers send every record, tracebacks included, to the run's logs on the server
before the record reaches the console handler; only the console is filtered here.
``verbose`` adds the INFO progress lines, ``debug`` shows everything as Prefect prints it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
QUIET_LIBRARIES = ("mlflow",)  # its INFO lines ("Creating initial MLflow database tables")


class _Console(logging.Filter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(RUN_LOGGERS) and record.levelno >= logging.ERROR:
            return False  # a failure report: in the run's logs, and the command's last line
        if record.levelno < logging.WARNING and not self.verbose:
            return False
        # the console is the last handler to see the record (run loggers' API handler
        # comes first), so its traceback can go: the run's logs keep it
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      logging.root.manager.loggerDict)]
    return [h for logger in loggers for h in getattr(logger, "handlers", [])
            if isinstance(h, PrefectConsoleHandler)]


@contextmanager
def flow_console(verbose: bool = False, debug: bool = False) -> Iterator[None]:
    """Filter Prefect's console output for the duration (nothing changes with ``debug``)."""
    if debug:
        yield
        return
    console = _Console(verbose)
    handlers = _console_handlers()
    for handler in handlers:
        handler.addFilter(console)
    libraries = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    if not verbose:
        for name in libraries:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console)
        for name, level in libraries.items():
            logging.getLogger(name).setLevel(level)
