"""Following ``models:/NAME@champion``: poll the alias, verify a new holder, swap atomically.

The slot holds one immutable ``Champion``; a swap is one assignment, so a batch that read the
old champion finishes on it and the next batch runs on the new one. A version that fails
verification (its signature, its files, or an alias moved outside vitedit-ops) is refused once
(log line + metric) and remembered with its tags and the alias's signed move, so it is not
downloaded again every poll; the champion already loaded keeps serving. An unreachable
registry is logged and retried at the next poll. ``wake()`` (a registry webhook) makes the
next look happen now instead of at the end of the poll interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable

from registry.errors import PromotionRefusedError
from registry.versions import VersionInfo
from vitedit_ops.errors import VitEditError

from . import champion as champions
from .champion import Champion

log = logging.getLogger(__name__)


def _tags_digest(info: VersionInfo, grant: str) -> str:
    return hashlib.sha256(json.dumps([info.version, info.tags, grant], sort_keys=True)
                          .encode()).hexdigest()


class ChampionSlot:
    """The champion being served, and the loop that keeps it the alias's verified holder."""

    def __init__(self, name: str, tracking_uri: str | None, *, poll_interval: float,
                 before_swap: Callable[[Champion], None],
                 on_outcome: Callable[[str, Champion | None], None],
                 threads: int | None = None) -> None:
        self.name = name
        self.tracking_uri = tracking_uri
        self.poll_interval = poll_interval
        self.before_swap = before_swap  # runs on the verified newcomer before it serves
        self.on_outcome = on_outcome  # ("loaded" | "refused" | "failed", current champion)
        self.threads = threads
        self.current: Champion | None = None
        self._refused: dict[str, set[str]] = {}  # version -> digests of its refused states
        self._last_failure = ""
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def check(self) -> str:
        """Look at the alias once and load its holder if it is new; returns what happened
        (``unchanged``, ``loaded``, ``refused``, ``failed``). Blocking: run it in a thread."""
        try:
            info = champions.resolve(self.name, self.tracking_uri)
        except VitEditError as exc:
            message = f"serving {self.name}: cannot read the champion alias: {exc}"
            if message != self._last_failure:  # once per distinct failure, not every poll
                log.error("%s", message)
            self._last_failure = message
            return self._outcome("failed")
        self._last_failure = ""
        current = self.current
        if current is not None and current.version == info.version:
            return "unchanged"
        try:
            grant = champions.signed_move(info, self.tracking_uri)
        except VitEditError as exc:
            log.error("serving %s: reading the champion's signed move failed: %s", self.name,
                      exc)
            return self._outcome("failed")
        digest = _tags_digest(info, grant)
        refused = self._refused.get(info.version)
        # a refused holder is looked at again when its tags or its signed move change, not
        # while the signed move names another version: that is a move being recorded
        if refused is not None and (digest in refused or not grant):
            return "unchanged"
        try:
            loaded = champions.load(info, self.tracking_uri, self.threads,
                                    not_before=current.move if current else 0)
        except PromotionRefusedError as exc:
            self._refused.setdefault(info.version, set()).add(digest)
            log.error("serving %s: champion v%s refused, %s: %s", self.name, info.version,
                      f"v{current.version} keeps serving" if current else "nothing is served",
                      "; ".join(exc.problems))
            return self._outcome("refused")
        except VitEditError as exc:
            log.error("serving %s: loading champion v%s failed: %s", self.name, info.version,
                      exc)
            return self._outcome("failed")
        self.before_swap(loaded)
        self.current = loaded  # the atomic swap
        log.info("serving %s v%s (%s)%s", self.name, loaded.version, loaded.provider,
                 f", was v{current.version}" if current else "")
        return self._outcome("loaded")

    def _outcome(self, outcome: str) -> str:
        self.on_outcome(outcome, self.current)
        return outcome

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="champion")

    def wake(self) -> None:
        """Look at the alias now (from the event loop); looks asked for meanwhile merge."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _poll(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()  # a wake during the look below triggers one more look
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failed look
                log.exception("serving %s: checking the champion alias failed", self.name)
                self._outcome("failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
