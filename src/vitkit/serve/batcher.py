"""Dynamic batching: requests that arrive within a short window share one forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["DynamicBatcher"]


class DynamicBatcher:
    """Queue (C, H, W) inputs; a worker runs ``fn`` on up to ``max_batch`` of them at a time.

    The worker takes whatever is queued, waits up to ``wait_ms`` for more (never past ``max_batch``), stacks the
    inputs and runs ``fn(batch) -> (B, ...)`` in a thread, then hands each request its row. ``batch_sizes``
    records every batch run (for tests and the load benchmark).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], max_batch: int = 32, wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.max_batch, self.wait = fn, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue[tuple[Tensor, asyncio.Future]] | None = None
        self.worker: asyncio.Task | None = None
        self.batch_sizes: list[int] = []

    async def submit(self, x: Tensor) -> Tensor:
        if self.queue is None:  # created lazily inside the server's event loop
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), max(timeout, 0)))
                except asyncio.TimeoutError:
                    break
            self.batch_sizes.append(len(items))
            try:
                out = await asyncio.to_thread(self.fn, torch.stack([x for x, _ in items]))
            except Exception as e:  # noqa: BLE001  (every waiting request gets the error)
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            for i, (_, future) in enumerate(items):
                if not future.done():
                    future.set_result(out[i])
