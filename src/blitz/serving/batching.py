"""Dynamic batching: requests that arrive together share one forward pass. A request's images
wait in a bounded queue; the model takes up to ``max_batch`` of them at once, and every request
gets back its own rows. While the model works, the next batch gathers by itself; an idle model
waits at most ``max_wait`` for company, and only while other requests are on their way (being
read and decoded): a lone request is answered at once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

Forward = Callable[[list[np.ndarray]], torch.Tensor]  # decoded images -> (N, K) rows


class QueueFull(Exception):
    """More images wait than the queue holds: the client should come back later."""


@dataclass
class _Job:
    arrays: list[np.ndarray]
    answer: asyncio.Future[torch.Tensor]


class Batcher:
    """Runs ``forward`` on batches of queued images, one batch at a time, in a thread of its
    own (the event loop keeps answering health checks and taking requests meanwhile)."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait
        self.max_queue, self.on_batch = max_queue, on_batch
        self._waiting: collections.deque[_Job] = collections.deque()
        self._queued = 0  # images in _waiting
        self._coming = 0  # requests being read and decoded, whose images will follow
        self._arrived = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="blitz-forward")
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around reading and decoding a request: an idle model waits for it to join."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            self._arrived.set()  # whether it joins or fails, the waiting batch need not wait

    async def submit(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """The (len(arrays), K) rows for these images, once their batch has run."""
        if self._queued and self._queued + len(arrays) > self.max_queue:
            raise QueueFull(f"{self._queued} images are waiting already (--max-queue)")
        job = _Job(arrays, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._queued += len(arrays)
        self._arrived.set()
        return await job.answer

    async def _serve(self) -> None:
        while True:
            jobs = await self._next_batch()
            await self._run(jobs)

    async def _next_batch(self) -> list[_Job]:
        """Jobs of at most max_batch images together (a larger request alone), first come
        first served; waits up to max_wait for the batch to fill while requests are coming."""
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while (
            self._coming and self._queued < self.max_batch and (left := deadline - loop.time()) > 0
        ):
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        jobs: list[_Job] = []
        count = 0
        while self._waiting and (
            not jobs or count + len(self._waiting[0].arrays) <= self.max_batch
        ):
            job = self._waiting.popleft()
            jobs.append(job)
            count += len(job.arrays)
        self._queued -= count
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.answer.done()]  # a client that left is skipped
        if not live:
            return
        arrays = [array for job in live for array in job.arrays]
        self.on_batch(len(arrays))
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._thread, self.forward, arrays)
        except Exception as exc:  # every request of the batch hears of it
            for job in live:
                if not job.answer.done():
                    job.answer.set_exception(exc)
            return
        start = 0
        for job in live:
            if not job.answer.done():
                job.answer.set_result(rows[start : start + len(job.arrays)])
            start += len(job.arrays)
