"""CUDA streams for the merge's row-block pipeline on a GPU (inspector/merge.py, ``_overlapped``).

Three lanes, each a CUDA stream: ``copy_in`` (host -> device), ``compute`` and ``copy_out`` (device
-> host). Work queued on one lane runs in order; between lanes, and between a lane and the host,
nothing is ordered except by an event: ``lane.wait(event)`` (the lane waits, the host goes on) and
``lanes.host_wait(event)`` (the host blocks). That is the whole contract the pipeline relies on, so
tests can run it on the CPU against lanes that keep the same contract and nothing more, run queued
work as late or in as odd an order as it allows, and so find a missing wait (tests/fakelanes.py).

``why`` names each wait for those tests (they drop one to prove it is needed); CUDA ignores it.
"""

from __future__ import annotations

from collections.abc import Callable


class CudaLane:
    """One CUDA stream. ``run(fn)`` queues the kernels and copies ``fn`` issues, on this stream."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self.stream = torch.cuda.Stream(device=device)

    def run(self, fn: Callable[[], object]) -> None:
        with self._torch.cuda.stream(self.stream):
            fn()

    def record(self):
        """An event that completes when the work queued on this lane so far has run."""
        event = self._torch.cuda.Event(blocking=True)  # a host waiting on it sleeps instead of spinning
        event.record(self.stream)
        return event

    def wait(self, event, why: str) -> None:
        """Work queued on this lane from now on starts after ``event``."""
        self.stream.wait_event(event)


class CudaLanes:
    """The three lanes of one device."""

    def __init__(self, device: str) -> None:
        import torch

        self._torch, self.device = torch, device
        self.copy_in, self.compute, self.copy_out = CudaLane(device), CudaLane(device), CudaLane(device)

    def start(self) -> None:
        """Every lane waits for what is already queued on the device's current stream (the adapter's
        matrices, DoRA's column norms: copied or computed there before the pipeline starts)."""
        ready = self._torch.cuda.current_stream(self.device).record_event()
        for lane in (self.copy_in, self.compute, self.copy_out):
            lane.stream.wait_event(ready)

    def host_wait(self, event, why: str) -> None:
        event.synchronize()

    def drain(self) -> None:
        """The host waits until every lane is idle: after this no queued copy or kernel touches a
        buffer any more, so buffers may be freed, regrown or handed to the current stream."""
        for lane in (self.copy_in, self.compute, self.copy_out):
            lane.stream.synchronize()
