"""Dynamic batching across clients: one asyncio queue, one worker, one onnxruntime call per
batch.

A request's images travel together (one version answers a whole request). The worker takes
the first waiting request, then whatever arrives within ``window`` seconds up to ``max_batch``
images, and runs the batch in a thread so the event loop keeps accepting requests meanwhile.
The champion is read once per batch: a swap between batches never splits one, and a batch in
flight finishes on the session it started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .champion import Champion

log = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """No verified champion is loaded yet (the server answers 503)."""


@dataclass
class _Pending:
    inputs: torch.Tensor  # (n, C, H, W), normalised
    future: asyncio.Future[tuple[Champion, np.ndarray]] = field(repr=False)


class Batcher:
    """Queue of normalised requests in front of the current champion's session."""

    def __init__(self, current: Callable[[], Champion | None], *, max_batch: int,
                 window: float, on_batch: Callable[[int], None]) -> None:
        self.current = current
        self.max_batch = max_batch
        self.window = window
        self.on_batch = on_batch
        self._waiting: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting are failed, not left hanging."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._waiting:
            pending = self._waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(NoChampionError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def predict(self, inputs: torch.Tensor) -> tuple[Champion, np.ndarray]:
        """Probabilities of one request's images and the champion that computed them."""
        future: asyncio.Future[tuple[Champion, np.ndarray]] = \
            asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(inputs, future))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            try:
                await self._answer(loop, batch)
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests only
                if not isinstance(exc, NoChampionError):
                    log.exception("a batch of %d requests failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    async def _next_arrival(self, timeout: float | None) -> bool:
        """Wait until a request is waiting; False when ``timeout`` passed first."""
        while not self._waiting:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return False
        return True

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        await self._next_arrival(None)
        batch = [self._waiting.popleft()]
        size = len(batch[0].inputs)
        deadline = loop.time() + self.window
        while size < self.max_batch:
            if not self._waiting:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._next_arrival(remaining):
                    break
            if size + len(self._waiting[0].inputs) > self.max_batch:
                break  # the next request does not fit: it starts the next batch
            batch.append(self._waiting.popleft())
            size += len(batch[-1].inputs)
        return batch

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        champion = self.current()
        if champion is None:
            raise NoChampionError("no verified champion is loaded yet")
        inputs = torch.cat([p.inputs for p in batch])
        probs = await loop.run_in_executor(self._executor, champion.probabilities, inputs)
        self.on_batch(len(inputs))
        offset = 0
        for pending in batch:
            n = len(pending.inputs)
            if not pending.future.done():  # a client that went away cancelled its future
                pending.future.set_result((champion, probs[offset:offset + n]))
            offset += n
