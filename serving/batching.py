"""Dynamic batching across clients: one asyncio queue, one worker, one thread that decodes,
preprocesses and predicts a whole batch in one onnxruntime call.

A request's images travel together (one version answers a whole request). The worker takes
the first waiting request, then whatever arrives within ``window`` seconds up to ``max_batch``
images, and hands the batch to its thread so the event loop keeps accepting requests
meanwhile: one hand-off per batch rather than per request, and one normalisation of the
stacked pixels. The champion is read once per batch: its preprocessor and session answer the
whole batch, a swap between batches never splits one, and a batch in flight finishes on the
session it started with.
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

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.preprocess import open_image

from .champion import Champion
from .payload import Upload

log = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """No verified champion is loaded yet (the server answers 503)."""


@dataclass(frozen=True)
class Answered:
    """A request's answer from one champion: per image either its row of ``probs`` or why it
    could not be read (an unreadable image costs that image only)."""

    champion: Champion
    slots: list[int | str]
    probs: np.ndarray  # (readable images, num_classes)


@dataclass
class _Pending:
    uploads: list[Upload]
    future: asyncio.Future[Answered] = field(repr=False)


def _decode(champion: Champion, uploads: list[Upload], pixels: list[torch.Tensor]
            ) -> list[int | str]:
    """Append a request's readable images to ``pixels``; per image its index or its error."""
    slots: list[int | str] = []
    for upload in uploads:
        try:
            image = open_image(upload.data, upload.name)
            pixels.append(champion.preprocessor.pixels_from_pil(image))
            slots.append(len(pixels) - 1)
        except InvalidInputError as exc:
            slots.append(str(exc))
    return slots


def _predict_batch(champion: Champion, requests: list[list[Upload]]
                   ) -> list[Answered | Exception]:
    """Decode, preprocess and predict every image of ``requests`` with one champion; a
    request whose decoding fails unexpectedly gets its error, the others their answers."""
    pixels: list[torch.Tensor] = []
    decoded: list[list[int | str] | Exception] = []
    for uploads in requests:
        kept = len(pixels)
        try:
            decoded.append(_decode(champion, uploads, pixels))
        except Exception as exc:  # noqa: BLE001 - it fails its own request only
            del pixels[kept:]
            decoded.append(exc)
    probs = np.empty((0, champion.spec.num_classes), np.float32)
    if pixels:
        probs = champion.probabilities(champion.preprocessor.normalize(torch.stack(pixels)))
    answers: list[Answered | Exception] = []
    for slots in decoded:
        if isinstance(slots, Exception):
            answers.append(slots)
            continue
        rows = [slot for slot in slots if isinstance(slot, int)]
        first = rows[0] if rows else 0
        answers.append(Answered(champion, [slot - first if isinstance(slot, int) else slot
                                           for slot in slots],
                                probs[first:first + len(rows)]))
    return answers


class Batcher:
    """Queue of requests' images in front of the current champion's session."""

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

    async def predict(self, uploads: list[Upload]) -> Answered:
        """One request's images, decoded and predicted by the champion of their batch."""
        future: asyncio.Future[Answered] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(uploads, future))
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
        size = len(batch[0].uploads)
        deadline = loop.time() + self.window
        while size < self.max_batch:
            if not self._waiting:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self._next_arrival(remaining):
                    break
            if size + len(self._waiting[0].uploads) > self.max_batch:
                break  # the next request does not fit: it starts the next batch
            batch.append(self._waiting.popleft())
            size += len(batch[-1].uploads)
        return batch

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        champion = self.current()
        if champion is None:
            raise NoChampionError("no verified champion is loaded yet")
        answers = await loop.run_in_executor(self._executor, _predict_batch, champion,
                                             [p.uploads for p in batch])
        images = sum(len(a.probs) for a in answers if isinstance(a, Answered))
        if images:
            self.on_batch(images)
        for pending, answer in zip(batch, answers):
            if pending.future.done():  # a client that went away cancelled its future
                continue
            if isinstance(answer, Exception):
                pending.future.set_exception(answer)
            else:
                pending.future.set_result(answer)
