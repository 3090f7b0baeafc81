"""Merge concurrent requests into one sampler batch (dynamic batching, no gradio here).

Every request thread calls :meth:`Batcher.submit` and blocks until its result is ready.
Requests wait in a list; whenever the sampler is free, one of the waiting threads becomes
the leader: it takes the oldest waiting request and every other waiting request with the
same grouping key (arrival order, up to ``max_requests`` requests and ``max_images``
images), runs them as one batch in its own thread, hands each request its part, and wakes
the others. Requests with another key wait for the next batch (the oldest request always
goes first, so none starves). One batch runs at a time.

With ``wait`` > 0 the leader first waits up to that many seconds for more requests of its
key to arrive (a collection window; 0: run at once, so a request that finds the sampler
idle is never delayed, and batches form from the requests that queued behind a busy one).
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class BatchInfo:
    """What one request learns about the batch it ran in."""

    requests: int  # requests merged into the batch (1: it ran alone)
    images: int  # images in the batch (the sum of the requests' sizes)
    waited: float  # seconds from submit to the start of its batch
    ran: float  # seconds the batch took


@dataclass
class _Job:
    key: Hashable
    item: Any
    size: int
    submitted: float
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    info: BatchInfo | None = None


@dataclass
class Batcher:
    """``run_batch(items) -> results`` (one per item, same order) on merged requests.

    Args:
        run_batch: samples a list of items that share a key; an exception fails every
            request of that batch (each gets a copy of it).
        max_requests: most requests in one batch (1: one at a time).
        max_images: most images in one batch (a single request larger than this still runs, alone).
        wait: seconds the leader waits for more requests of its key before running.
    """

    run_batch: Callable[[list], list]
    max_requests: int = 8
    max_images: int = 64
    wait: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    batches: int = 0  # batches run so far (for tests and logs)
    _cv: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _pending: list = field(default_factory=list, repr=False)
    _busy: bool = False

    def __post_init__(self):
        if self.max_requests < 1 or self.max_images < 1 or self.wait < 0:
            raise ValueError("max_requests and max_images must be >= 1, wait >= 0")

    def submit(self, key: Hashable, item, size: int = 1) -> tuple[Any, BatchInfo]:
        """Run ``item`` (of ``size`` images) in a batch of requests with the same ``key``;
        blocks until done. Returns (its result, :class:`BatchInfo`)."""
        job = _Job(key, item, int(size), self.clock())
        with self._cv:
            self._pending.append(job)
            self._cv.notify_all()
            while not job.done:
                if self._busy:
                    self._cv.wait()
                    continue
                self._busy = True  # this thread leads the next batch
                try:
                    if self.wait > 0:
                        self._gather()
                    batch = self._select()
                except BaseException:
                    self._busy = False
                    self._cv.notify_all()
                    raise
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    for j in batch:
                        j.done = True
                    self._busy = False
                    self.batches += 1
                    self._cv.notify_all()
        if job.error is not None:
            raise copy.copy(job.error) from None
        return job.result, job.info

    # ------------------------------------------------------------------ under the lock

    def _fits(self, jobs: list, key) -> tuple[int, int]:
        """(requests, images) the next batch of ``key`` would take from ``jobs``."""
        n = images = 0
        for j in jobs:
            if j.key != key:
                continue
            if n >= self.max_requests or (n and images + j.size > self.max_images):
                break
            n, images = n + 1, images + j.size
        return n, images

    def _gather(self) -> None:
        """Wait up to ``wait`` seconds while the oldest request's batch could still grow."""
        end = self.clock() + self.wait
        while True:
            key = self._pending[0].key
            n, images = self._fits(self._pending, key)
            left = end - self.clock()
            if left <= 0 or n >= self.max_requests or images >= self.max_images:
                return
            if n == sum(j.key == key for j in self._pending) and images < self.max_images:
                self._cv.wait(timeout=left)
            else:  # the next one of this key would not fit: the batch is as large as it gets
                return

    def _select(self) -> list:
        """Take the oldest request and those of its key that fit, in arrival order."""
        key = self._pending[0].key
        n, _ = self._fits(self._pending, key)
        batch = [j for j in self._pending if j.key == key][:n]
        taken = {id(j) for j in batch}
        self._pending = [j for j in self._pending if id(j) not in taken]
        return batch

    # ------------------------------------------------------------------ outside the lock

    def _run(self, batch: list) -> None:
        start = self.clock()
        try:
            results = self.run_batch([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
            for j, r in zip(batch, results):
                j.result = r
        except BaseException as e:  # every request of the batch gets it; the batcher stays usable
            for j in batch:
                j.error = e
        end = self.clock()
        info = dict(requests=len(batch), images=sum(j.size for j in batch), ran=end - start)
        for j in batch:
            j.info = BatchInfo(waited=start - j.submitted, **info)
