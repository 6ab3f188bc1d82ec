"""CUDA streams simulated on the CPU, to test the merge's overlapped pipeline without a GPU.

``FakeLanes`` keeps the contract of inspector/streams.py and nothing more: work queued on a lane runs
in order; a lane's ``wait`` holds back only that lane; ``host_wait`` runs queued work until the event
is reached. Queued work runs on the host thread, single-threaded and deterministic for a seed, at
the latest moment the contract allows ("lazy": only what the awaited event needs, so the host races
as far ahead of the device as it can), at once ("eager": a device infinitely fast, whose copies
land in a host buffer the moment they are queued) or at random moments in random interleavings of
the lanes ("random": one lane far ahead of another). A wait the pipeline lacks then shows up as
wrong bytes: a copy reading a buffer before it was filled, or writing one still in use.

``dropped``: names of waits (their ``why``) to ignore, to show that a test would see each one missing.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable


class FakeEvent:
    def __init__(self, lane: FakeLane) -> None:
        self.lane, self.done = lane, False


class FakeLane:
    def __init__(self, lanes: FakeLanes, name: str) -> None:
        self.lanes, self.name = lanes, name
        self.queue: deque[tuple[str, object]] = deque()

    def run(self, fn: Callable[[], object]) -> None:
        self.lanes.log.append(f"run {self.name}")
        self.queue.append(("run", fn))
        self.lanes.maybe_run()

    def record(self) -> FakeEvent:
        event = FakeEvent(self)
        self.queue.append(("record", event))
        self.lanes.maybe_run()
        return event

    def wait(self, event: FakeEvent, why: str) -> None:
        self.lanes.waits[why] += 1
        if why not in self.lanes.dropped:
            self.queue.append(("wait", event))

    def blocker(self) -> FakeEvent | None:
        """The unreached event this lane's next item waits for, if any."""
        if self.queue and self.queue[0][0] == "wait" and not self.queue[0][1].done:
            return self.queue[0][1]
        return None

    def step(self) -> None:
        kind, item = self.queue.popleft()
        if kind == "run":
            item()
            self.lanes.runs[self.name] += 1
        elif kind == "record":
            item.done = True


class FakeLanes:
    def __init__(self, seed: int = 0, mode: str = "lazy", dropped: tuple[str, ...] = ()) -> None:
        assert mode in ("lazy", "eager", "random")
        self.rng, self.mode, self.dropped = random.Random(seed), mode, frozenset(dropped)
        self.copy_in, self.compute, self.copy_out = FakeLane(self, "copy_in"), FakeLane(self, "compute"), FakeLane(self, "copy_out")
        self.lanes = (self.copy_in, self.compute, self.copy_out)
        self.runs: Counter[str] = Counter()  # work items run, per lane
        self.waits: Counter[str] = Counter()  # waits asked for, per why (dropped ones too)
        self.log: list[str] = []  # "start", "run <lane>" as the host issued them (a test may add its own)

    def _runnable(self) -> list[FakeLane]:
        return [lane for lane in self.lanes if lane.queue and lane.blocker() is None]

    def _deadlock(self) -> AssertionError:
        return AssertionError("deadlock: every lane with work waits for an event never recorded")

    def maybe_run(self) -> None:
        """After each item queued: eager mode runs all it can; random mode, now and then, some of it."""
        if self.mode == "lazy":
            return
        for _ in range(10**9 if self.mode == "eager" else self.rng.choice((0, 0, 1, 3))):
            runnable = self._runnable()
            if not runnable:
                return
            self.rng.choice(runnable).step()

    def _until(self, event: FakeEvent) -> None:
        while not event.done:
            if self.mode != "lazy":
                runnable = self._runnable()
                if not runnable:
                    raise self._deadlock()
                self.rng.choice(runnable).step()
                continue
            lane = event.lane  # lazy: only the lane the event is on, and what it waits for in turn
            seen = set()
            while (blocker := lane.blocker()) is not None:
                if id(lane) in seen:
                    raise self._deadlock()
                seen.add(id(lane))
                lane = blocker.lane
            if not lane.queue:
                raise self._deadlock()
            lane.step()

    def start(self) -> None:
        self.log.append("start")  # the host's earlier work is done already here: it ran when it was issued

    def host_wait(self, event: FakeEvent, why: str) -> None:
        self.waits[why] += 1
        if why not in self.dropped:
            self._until(event)

    def drain(self) -> None:
        for lane in self.lanes:
            while lane.queue:
                event = FakeEvent(lane)
                lane.queue.append(("record", event))
                self._until(event)
