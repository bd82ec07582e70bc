"""Continuous batching: requests join and leave one decode loop over one KV cache.

A :class:`BatchScheduler` owns a :class:`~chameleon_lite.generate.engine.Generator`, a cache of ``2 * max_batch``
rows (a request with classifier-free guidance takes two) and a thread that runs the loop. Each step it admits
waiting requests in arrival order while their rows fit (a request's prompt is prefilled into free cache rows while
the others keep their state), samples one id for every live request, hands finished ones their documents, and runs
one decode step over the rest (:meth:`Generator.decode_runs`). Every live request advances every step and the
queue is first in, first out, so no request can starve another; the queue is bounded (:class:`Busy` past it).

A request is generated as a batch of one: with the same prompt, settings and seed it draws the ids that
``generate`` draws alone (sampling is keyed by the request's own step and row 0), up to float rounding in the
batched decode steps.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from chameleon_lite.errors import UserError
from chameleon_lite.generate.document import Document
from chameleon_lite.generate.engine import GenerationConfig, Generator, Prompt, StreamEvent, _resolve_dtype


class Busy(UserError):
    """The queue is full: try again later."""


class Job:
    """One request: its prompt and settings, its stream callback, and (when ``done`` is set) its ``document`` or
    its ``error`` (one line)."""

    def __init__(self, jid: int, prompt: Prompt, cfg: GenerationConfig, on_event: Callable[[StreamEvent], None] | None):
        self.id, self.prompt, self.cfg, self.on_event = jid, prompt, cfg, on_event
        self.done = threading.Event()
        self.document: Document | None = None
        self.error: str | None = None
        self.submitted = time.perf_counter()
        self.started: float | None = None  # admitted and prefilled
        self._cancel = self._stop = False
        self._run: Any = None
        self._logits: Any = None

    def cancel(self) -> None:
        """Drop the request (its client left): no document is made."""
        self._cancel = True

    def stop(self) -> None:
        """End the generation now and keep what it made (a document with finish reason "stop")."""
        self._stop = True

    def result(self, timeout: float | None = None) -> Document:
        """Wait for the document; raises UserError with the request's one-line error."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.id} is still running after {timeout} s")
        if self.error is not None:
            raise UserError(self.error)
        return self.document


class BatchScheduler:
    """Run requests through one batched decode loop (see the module docstring). ``dtype`` and ``weights`` are the
    server's: every request computes in them (a request's own ``cfg.dtype`` is ignored)."""

    def __init__(
        self,
        gen: Generator,
        max_batch: int = 8,
        max_queue: int = 32,
        dtype: str = "auto",
        weights: str = "auto",
        thread: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise UserError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.gen, self.max_batch, self.max_queue = gen, max_batch, max_queue
        self.dtype = _resolve_dtype(dtype)
        self.dtype_name = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        gen._use_dtype(self.dtype, weights)
        gen.model.setup_cache(2 * max_batch, gen.context, dtype=self.dtype)
        self._free = list(range(2 * max_batch - 1, -1, -1))  # pop() gives the lowest free row
        self._queue: collections.deque[Job] = collections.deque()
        self._live: list[Job] = []
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._running: threading.Thread | None = None
        self.steps = 0
        self._exited = threading.Event()
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = self._running = threading.Thread(target=self.run, name="batch-scheduler", daemon=True)
            self._thread.start()

    # ---- the caller's side ---------------------------------------------------------------------------
    def submit(
        self, prompt: Prompt, cfg: GenerationConfig, on_event: Callable[[StreamEvent], None] | None = None
    ) -> Job:
        """Queue a request -> its Job. Raises :class:`Busy` when ``max_queue`` requests are already waiting."""
        with self._cv:
            if self._closed:
                raise UserError("the scheduler is closed")
            if len(self._queue) >= self.max_queue:
                raise Busy(f"busy: {len(self._queue)} requests are waiting; try again later")
            job = Job(next(self._ids), prompt, dataclasses.replace(cfg, dtype=self.dtype_name), on_event)
            self._queue.append(job)
            self._cv.notify()
        return job

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"live": len(self._live), "waiting": len(self._queue), "max_batch": self.max_batch}

    def close(self) -> None:
        """Stop the loop; requests still queued or live end with an error."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        elif self._running and threading.current_thread() is not self._running:
            self._exited.wait()
        for job in [*self._queue, *self._live]:
            self._fail(job, "the server shut down before the request finished")

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the loop in the calling thread until :meth:`close` (a scheduler made with ``thread=False``).

        Why a caller would: on a CPU, run the loop in the thread that loaded the model. Each thread that runs
        parallel torch ops gets its own OpenMP team; once the process holds more OpenMP threads than cores, the
        OpenMP runtime stops spinning between parallel regions and every small op of a decode step pays a
        sleep and wake-up (measured: a small bf16 matmul 3x slower in a second thread on 2 cores)."""
        with self._cv:
            if self._running not in (None, threading.current_thread()):
                raise UserError("the scheduler's loop is already running")
            self._running = threading.current_thread()
        try:
            with torch.inference_mode():  # as generate: no autograd state, and the tensors generate made are usable
                self._serve()
        finally:
            self._exited.set()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._queue and not self._live:
                    # with a timeout: a Ctrl-C the kernel hands to another thread (the HTTP server's, a kernel
                    # worker's) does not wake an untimed wait, and Python raises KeyboardInterrupt only when the
                    # main thread runs bytecode again
                    self._cv.wait(0.25)
                if self._closed:
                    return
                admit = []
                while self._queue and len(self._live) + len(admit) < self.max_batch:
                    admit.append(self._queue.popleft())
            for job in admit:
                self._admit(job)
            try:
                self._step()
            except Exception as e:  # a bug must not hang every client: end the live requests with its message
                for job in list(self._live):
                    self._release(job)
                    self._fail(job, f"internal error: {type(e).__name__}: {e}")

    def _admit(self, job: Job) -> None:
        if job._cancel:
            return self._fail(job, "cancelled")
        try:
            run = self.gen.plan([job.prompt], job.cfg)
        except UserError as e:
            return self._fail(job, str(e))
        run.slots = [self._free.pop() for _ in range(run.rows)]
        try:
            job._logits = self.gen.prefill(run)
        except Exception as e:
            self._free.extend(run.slots)
            return self._fail(job, f"{type(e).__name__}: {e}")
        job._run, job.started = run, time.perf_counter()
        with self._cv:
            self._live.append(job)

    def _step(self) -> None:
        batch = []
        for job in list(self._live):
            run = job._run
            if job._cancel:
                self._release(job)
                self._fail(job, "cancelled")
                continue
            if job._stop:
                run.sm.stop(0)
                run.finish[0] = "stop"
            else:
                ids, done_before = self.gen.sample_step(run, job._logits, job.on_event)
            if bool(run.sm.done().all()):
                self._release(job)
                self._finish(job)
            else:
                batch.append((job, ids, done_before))
        if batch:
            logits = self.gen.decode_runs([(job._run, ids, d) for job, ids, d in batch])
            for (job, _, _), lg in zip(batch, logits):
                job._logits = lg
            self.steps += 1

    def _release(self, job: Job) -> None:
        with self._cv:
            self._live.remove(job)
        self._free.extend(job._run.slots)
        self._free.sort(reverse=True)

    def _finish(self, job: Job) -> None:
        try:
            doc = self.gen.documents(job._run)[0]
        except Exception as e:
            return self._fail(job, f"{type(e).__name__}: {e}")
        now = time.perf_counter()
        doc.timings = {
            "queue_s": (job.started or now) - job.submitted,
            "generate_s": now - (job.started or now),
            "new_tokens": len(doc.ids),
            "dtype": self.dtype_name,
        }
        job.document = doc
        job._run = job._logits = None
        job.done.set()

    @staticmethod
    def _fail(job: Job, message: str) -> None:
        job.error = message
        job._run = job._logits = None
        job.done.set()
