"""``merge``: stream BASE + ADAPTER into a merged model equal to PEFT's ``merge_and_unload``.

The plan comes from ``check`` (headers only; inspector/merge_plan.py): refuse what cannot be
repaired, grow the vocabulary to the size the adapter implies, and turn every adapter tensor into
work on one output tensor. Execution, here, reads one row block at a time, computes in fp32 on the
device, casts back, checks that the result is finite and hands it to the shared writer: peak
memory is one tensor's block (the vocabulary growth statistics aside), never the model.

Reading and computing run in one thread, writing in the caller's (``_Ahead``). On a GPU the blocks
also go through three CUDA streams (``_overlapped``, inspector/streams.py), so that the disk read
of one block overlaps the copies and kernels of the one before.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import json
import math
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inspector import interrupts
from inspector.check import run_check
from inspector.errors import InvalidInputError, UsageError
from inspector.io.loader import TensorReader
from inspector.io.shards import OutputTensor
from inspector.io.sidefiles import copy_side, output_side_files, output_side_folders, side_bytes, tokenizer_from
from inspector.io.tensor import STREAM_BLOCK_BYTES
from inspector.io.writer import CheckpointWriter
from inspector.merge_plan import DTYPES, Job, MergePlan, plan_merge
from inspector.repair import MERGE_INITS, grow, initializer_range

CHUNK_BYTES = STREAM_BLOCK_BYTES  # fp32 bytes of one row block (check's memory plan uses the same)
AHEAD = 2  # blocks the compute thread may run ahead of the writer
SLOTS = AHEAD + 2  # output buffers in turn: those queued, the one being written, the one being filled
DEPTH = 2  # row blocks in flight on a GPU: one copied in, computed and copied out while the next is read
HOST_SLOTS = AHEAD + 1 + DEPTH  # GPU output blocks in turn: those queued, the one being written, those in flight
_END = object()  # after a tensor's last row block
Progress = Callable[[int, int], None]  # (bytes done now, total bytes)


@dataclass
class MergeResult:
    out: Path
    plan: MergePlan
    stats: dict[str, int]
    tokenizer_from: str | None  # None: no input had tokenizer files


def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", "cpu"):
        return "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    if cuda is None:
        raise UsageError("Invalid --device", None, f"{device!r} is not auto, cpu, cuda or cuda:N", "Use --device auto|cpu|cuda|cuda:N.")
    if not torch.cuda.is_available():
        raise UsageError("Cannot use --device", None, f"{device} was asked for but CUDA is not available", "Use --device cpu (or auto).")
    if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
        raise UsageError("Cannot use --device", None, f"{device} does not exist ({torch.cuda.device_count()} CUDA devices)", "Use --device cuda:0 or auto.")
    return device


# -- execution -------------------------------------------------------------------------------------


def _grown(job: Job, reader: TensorReader, plan: MergePlan, seed: int):
    """The whole tensor grown to its output shape, old rows as stored, new rows by --init (resize's
    rules, final_logits_bias zeros included), from the base's own rows: read once, in its dtype."""
    return grow(reader.read(job.source), plan.vocab, job.name, seed=seed, init_range=initializer_range(plan.diagnosis.base.config), subword=None)


def _all_finite(t) -> bool:
    """``bool(torch.isfinite(t).all())``, about 10x faster on the CPU for the common float dtypes:
    ``aminmax`` is one vectorized pass, propagates NaN, and shows +/-inf as the max/min."""
    import torch

    if t.numel() == 0:
        return True
    if t.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        lo, hi = torch.aminmax(t)
        return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))
    return bool(torch.isfinite(t).all())


def _fp32(t, dev: str, *, copy: bool = False):
    """``t`` on the device in fp32, moved first and converted there: a blocking host-to-device copy
    that also changes the dtype converts on the host, sending twice the bytes over the bus."""
    import torch

    return t.to(dev).to(torch.float32, copy=copy)


def _finite(t, job: Job, fp32=None) -> None:
    """Refuse NaN/Inf in a result; ``fp32``, the values before the cast, tells an overflow of the
    output dtype (fp16 tops out at 65504) from NaN/Inf that came with the inputs."""
    if not t.is_floating_point() or _all_finite(t):
        return
    _refuse_non_finite(job, t.dtype, float(fp32.abs().max()) if fp32 is not None and _all_finite(fp32) else None)


def _refuse_non_finite(job: Job, dtype, top: float | None) -> None:
    """``top``: the largest magnitude of the fp32 values when they were all finite (an overflow)."""
    if top is not None:
        import torch

        raise InvalidInputError("Refusing to write an overflowed result", job.name,
                                f"merged values up to {top:.4g} do not fit {job.dtype} (largest {torch.finfo(dtype).max:.6g})",
                                "Write a wider dtype: --dtype bf16 (same range as fp32) or --dtype fp32; nothing was written.")
    raise InvalidInputError("Refusing to write a non-finite result", job.name, "the merged tensor contains NaN or Inf", "Check the adapter and the base for NaN/Inf values (`lora-inspector diff --values`); nothing was written.")


def _whole(job: Job, base: TensorReader, adapter: TensorReader, plan: MergePlan, seed: int):
    """Small tensors (biases, norms, scalars): computed whole."""
    from inspector.io.loader import torch_dtype

    dev = plan.device
    if job.replace is not None:
        t = _fp32(adapter.read(job.replace), dev)
    elif job.shape != job.source.shape:
        t = _fp32(_grown(job, base, plan, seed), dev)
    else:
        t = _fp32(base.read(job.source), dev)
    for info, scale in job.bias_deltas:
        t = t + scale * _fp32(adapter.read(info), dev)
    out = t.to(torch_dtype(job.dtype))
    _finite(out, job, t)  # on the device: one reduction there instead of one on the host
    return out.cpu()


class _Arena:
    """Block buffers reused across blocks and tensors, one per role: a fresh 64 MB buffer per block
    cost a page fault per 4 KB page (glibc maps and unmaps large blocks) and made every write() of
    it dearer (3.76 GB case on 2 cores: 4.4 M minor faults, 17 s of system time). ``pin``: a host
    buffer the GPU copies to or from, page-locked so the copy is DMA at the bus's speed; pinning is
    slow, hence done once per buffer, never per block."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, str], object] = {}
        self._turns: dict[str, int] = {}

    def get(self, role: str, dtype, shape: tuple[int, ...], dev: str = "cpu", *, pin: bool = False):
        """A contiguous tensor of ``shape``, its contents undefined (the caller fills all of it)."""
        import torch

        nbytes = math.prod(shape) * dtype.itemsize
        buf = self._bufs.get((role, dev))
        if buf is None or buf.numel() < nbytes:
            buf = self._bufs[(role, dev)] = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=dev, pin_memory=pin and dev == "cpu")
        return buf[:nbytes].view(dtype).view(shape)

    def slot(self, role: str, dtype, shape: tuple[int, ...], dev: str = "cpu", *, pin: bool = False, count: int = SLOTS):
        """``get`` for a block handed to the writer: one of ``count`` buffers of this role in turn, so
        that a block is not overwritten while it waits in the read-ahead queue or is being written."""
        turn = self._turns[role] = (self._turns.get(role, -1) + 1) % count
        return self.get(f"{role}{turn}", dtype, shape, dev, pin=pin)


def _copied(job: Job, reader: TensorReader, info, step: int, arena: _Arena) -> Iterator:
    """A tensor copied through as stored, in row blocks: the bytes as read (no decode or encode),
    only the finite check (a NaN in an untouched base tensor is refused too)."""
    import torch

    row_bytes = info.nbytes // max(1, info.shape[0])
    for r0 in range(0, job.shape[0], step):
        raw = arena.slot("raw", torch.uint8, (min(step, job.shape[0]) * row_bytes,))
        block = reader.read_rows(info, r0, r0 + step, into=raw)
        _finite(block, job)
        yield block


def _column_norms(rows_fp32, rows: int, step: int):
    """The L2 norm of each column of the merged (W + s B A), over all row blocks."""
    sq = None
    for r0 in range(0, rows, step):
        w = rows_fp32(r0, min(rows, r0 + step))
        sq = w.square().sum(dim=0) if sq is None else sq + w.square().sum(dim=0)
    return sq.sqrt()


def _folds(scale: float) -> bool:
    """``w.add_(d, alpha=scale)`` (one fused pass) gives the bits of ``w.add_(d.mul_(scale))`` only
    when ``scale * d`` is exact: a power of two, at least 1 (below 1 a subnormal product rounds)."""
    return scale >= 1 and math.frexp(scale)[0] == 0.5


def _delta_adder(job: Job, adapter: TensorReader, dev: str, arena: _Arena, step: int):
    """``add(w, r0, r1)``: adds every LoRA delta's rows [r0, r1) to ``w`` in place, through one reused buffer."""
    import torch

    loras = [(d, _fp32(adapter.read(d.A), dev), _fp32(adapter.read(d.B), dev)) for d in job.deltas]
    delta = arena.get("delta", torch.float32, (min(step, job.shape[0]), *job.shape[1:]), dev) if loras else None

    def add(w, r0: int, r1: int) -> None:
        for spec, A, B in loras:
            # Linear: rows of B @ A; transposed (Conv1D, Embedding): rows of (B @ A).T = A.T @ B.T
            a, b = (A[:, r0:r1].T, B.T) if spec.transposed else (B[r0:r1], A)
            d = torch.mm(a, b, out=delta[: r1 - r0]) if w.dim() == 2 else a @ b
            if _folds(spec.scale):
                w.add_(d, alpha=spec.scale)
            else:
                w.add_(d.mul_(spec.scale))  # the same bits as scale * delta, one temporary less

    return loras, add


class _Rows:
    """One 2-D+ job's row-block arithmetic (LoRA deltas, DoRA, trainable tokens), the same for the
    serial loop (CPU) and the overlapped one (GPU). Set up once per job: the adapter's matrices on
    the device, the reused fp32 block buffer, DoRA's column norms when they need a first pass."""

    def __init__(self, job: Job, base: TensorReader, adapter: TensorReader, plan: MergePlan, seed: int, arena: _Arena) -> None:
        import torch

        from inspector.io.loader import torch_dtype

        self.job, self.arena, self.dev, self.out_dtype = job, arena, plan.device, torch_dtype(job.dtype)
        rows = self.rows = job.shape[0]
        row_numel = max(1, math.prod(job.shape[1:]))
        self.step = max(1, CHUNK_BYTES // (4 * row_numel))
        self.block_shape = (min(self.step, rows), *job.shape[1:])
        self.source, self._reader = (job.replace, adapter) if job.replace is not None else (job.source, base)
        # Rows nobody carries need the whole matrix for their statistics: read it once and slice it.
        self._whole = _grown(job, base, plan, seed) if job.replace is None and rows > self.source.shape[0] else None
        self.loras, self.add_deltas = _delta_adder(job, adapter, self.dev, arena, self.step)
        self._dora = [d for d, _, _ in self.loras if d.magnitude is not None]
        self._tokens = [self._token_rows(idx, adapter.read(info)) for idx, info in job.tokens]
        self.wbuf = arena.get("w", torch.float32, self.block_shape, self.dev)
        self.raw_bytes = self.block_shape[0] * (self.source.nbytes // max(1, self.source.shape[0]))
        # DoRA: W' = m / ||W + s B A|| * (W + s B A), the norm per output unit. For Linear that is a row
        # (local to a block); for Conv1D and Embedding a column over all rows, hence a first pass.
        self._column_norms = {d.module: _column_norms(self.rows_fp32, rows, self.step) for d in self._dora if d.transposed}
        self._magnitudes = {d.module: _fp32(adapter.read(d.magnitude), self.dev) for d in self._dora}

    def _token_rows(self, indices: tuple[int, ...], values):
        """Trainable tokens' rows for ``finish``: indices sorted (stable: a repeated index keeps its
        order) on the host to find a block's share by bisection, and on the device with the values
        in that order, so that a block takes a slice there and never waits for a host copy."""
        import torch

        idx, order = torch.sort(torch.tensor(indices, dtype=torch.long), stable=True)
        return idx.tolist(), idx.to(self.dev), _fp32(values, self.dev)[order.to(self.dev)]

    def stored(self, r0: int, r1: int, into):
        """The source rows [r0, r1) on the host as stored: read into the uint8 buffer ``into`` (a
        view of it, except for a strided view's rows), or sliced from the grown matrix."""
        if self._whole is not None:
            return self._whole[r0:r1]
        return self._reader.read_rows(self.source, r0, r1, into=into)

    def rows_fp32(self, r0: int, r1: int):
        """W + s B A for rows [r0, r1), in fp32 on the device, computed now (the serial path, and
        DoRA's first pass on a GPU before the lanes start)."""
        import torch

        raw = None if self._whole is not None else self.arena.get("raw", torch.uint8, (self.raw_bytes,), pin=self.dev != "cpu")
        src = self.stored(r0, r1, raw)
        return self.widened(self.wbuf[: r1 - r0], src if self.dev == "cpu" else src.to(self.dev), r0, r1)

    def widened(self, w, src, r0: int, r1: int):
        """``w`` (fp32, on the device) set to the rows ``src`` and their LoRA deltas."""
        w.copy_(src)  # exact widening: the bits of src.to(float32)
        self.add_deltas(w, r0, r1)
        return w

    def finish(self, w, r0: int, r1: int) -> None:
        """DoRA's scaling and the trainable tokens' rows, in place: device work only, nothing the host
        waits for (on a GPU the host queues it and goes on)."""
        for d in self._dora:
            m = self._magnitudes[d.module]
            if d.transposed:
                w.mul_((m / self._column_norms[d.module])[None, :])
            else:
                w.mul_((m[r0:r1] / w.norm(dim=1))[:, None])
        for at, idx, values in self._tokens:
            lo, hi = bisect.bisect_left(at, r0), bisect.bisect_left(at, r1)
            if lo < hi:
                w.index_copy_(0, idx[lo:hi] - r0, values[lo:hi])


def _serial(rows: _Rows) -> Iterator:
    """Each block read, computed and handed on in turn (the CPU): a view of one of the arena's
    output slots, which the writer has written before the slot comes round again."""
    job, arena = rows.job, rows.arena
    for r0 in range(0, rows.rows, rows.step):
        r1 = min(rows.rows, r0 + rows.step)
        w = rows.rows_fp32(r0, r1)
        rows.finish(w, r0, r1)
        out = arena.slot("out", rows.out_dtype, rows.block_shape)[: r1 - r0]
        out.copy_(w)  # round to the output dtype: the bits of w.to(out_dtype)
        _finite(out, job, w)
        yield out


def _computed(rows: _Rows, w, src, out, stats, r0: int, r1: int) -> None:
    """On the compute lane: block [r0, r1) from its rows on the device into ``out``, and the four
    numbers the host checks it by (``_checked``): min and max of ``out`` and of the fp32 values."""
    import torch

    rows.finish(rows.widened(w, src, r0, r1), r0, r1)
    out.copy_(w)
    if out.numel():
        lo, hi = torch.aminmax(out)
        wlo, whi = torch.aminmax(w)
        torch.stack((lo.float(), hi.float(), wlo, whi), out=stats)
    else:
        stats.zero_()


def _copied_out(host, out, host_stats, stats) -> None:
    """On the copy-out lane: the block and its four numbers into pinned host memory."""
    host.copy_(out, non_blocking=True)
    host_stats.copy_(stats, non_blocking=True)


def _checked(job: Job, out_dtype, stats) -> None:
    """``_finite`` from the block's min/max (``_computed``): the same refusals, the same message."""
    lo, hi, wlo, whi = stats.tolist()
    if math.isfinite(lo) and math.isfinite(hi):
        return
    _refuse_non_finite(job, out_dtype, max(abs(wlo), abs(whi)) if math.isfinite(wlo) and math.isfinite(whi) else None)


def _overlapped(rows: _Rows, lanes) -> Iterator:
    """The blocks through three CUDA streams (inspector/streams.py): block b's rows are read from
    the disk into pinned buffer b % DEPTH while block b - 1 is copied in, computed and copied out.

    Only three waits order a block: compute after its copy-in, copy-out after its compute, the host
    after its copy-out before handing it on. Buffer set k is reused by block b only after block
    b - DEPTH, its last user, was finished that way, so no buffer needs a wait of its own. Blocks
    handed on are views of pinned ``host`` slots, HOST_SLOTS in turn."""
    import torch

    job, arena, dev, pin = rows.job, rows.arena, rows.dev, rows.dev != "cpu"
    shape, out_dtype = rows.block_shape, rows.out_dtype
    host_in = [arena.get(f"host-in{k}", torch.uint8, (rows.raw_bytes,), pin=pin) for k in range(DEPTH)]
    dev_in = [arena.get(f"dev-in{k}", torch.uint8, (rows.raw_bytes,), dev) for k in range(DEPTH)]
    dev_out = [arena.get(f"dev-out{k}", out_dtype, shape, dev) for k in range(DEPTH)]
    host_stats = [arena.get(f"host-stats{k}", torch.float32, (4,), pin=pin) for k in range(DEPTH)]
    dev_stats = [arena.get(f"dev-stats{k}", torch.float32, (4,), dev) for k in range(DEPTH)]
    pending: collections.deque = collections.deque()  # (copied-out event, host block, host stats), oldest first

    def finished():
        copied_out, block, stats = pending.popleft()
        lanes.host_wait(copied_out, "copied-out")
        _checked(job, out_dtype, stats)
        return block

    lanes.start()  # after _Rows' setup: its copies and conversions on the current stream come first
    try:
        for b, r0 in enumerate(range(0, rows.rows, rows.step)):
            r1, k = min(rows.rows, r0 + rows.step), b % DEPTH
            if len(pending) == DEPTH:
                yield finished()  # block b - DEPTH: buffer set k is free from here on
            src = rows.stored(r0, r1, host_in[k])
            nbytes = src.numel() * src.element_size()
            staged = host_in[k][:nbytes].view(src.dtype).view(src.shape)
            if staged.data_ptr() != src.data_ptr():  # grown matrix, strided view: not read in place
                staged.copy_(src)
            src_dev = dev_in[k][:nbytes].view(src.dtype).view(src.shape)
            lanes.copy_in.run(functools.partial(src_dev.copy_, staged, non_blocking=True))
            lanes.compute.wait(lanes.copy_in.record(), "copied-in")
            out = dev_out[k][: r1 - r0]
            lanes.compute.run(functools.partial(_computed, rows, rows.wbuf[: r1 - r0], src_dev, out, dev_stats[k], r0, r1))
            lanes.copy_out.wait(lanes.compute.record(), "computed")
            block = arena.slot("host", out_dtype, shape, pin=pin, count=HOST_SLOTS)[: r1 - r0]
            lanes.copy_out.run(functools.partial(_copied_out, block, out, host_stats[k], dev_stats[k]))
            pending.append((lanes.copy_out.record(), block, host_stats[k]))
        while pending:
            yield finished()
    except BaseException:  # also when the merge stops early: no copy may outlive the buffers it writes
        with contextlib.suppress(Exception):  # a failed device fails every call: keep the first error
            lanes.drain()
        raise
    lanes.drain()


def _blocks(job: Job, base: TensorReader, adapter: TensorReader, plan: MergePlan, seed: int, arena: _Arena | None = None, lanes=None) -> Iterator:
    """Row blocks of a 2-D+ output tensor, in the output dtype, on the CPU. Every block is a view of
    a buffer a later block reuses: the consumer writes it out before asking for SLOTS more."""
    arena = arena or _Arena()
    # Copied through as stored (only the finite check): an untouched base tensor, or a full copy
    # from the adapter already in the output dtype and shape (an fp32 round trip gives the same bits).
    copy = job.replace is not None and not (job.deltas or job.tokens) and job.replace.dtype == job.dtype and job.replace.shape == job.shape
    if job.unchanged or copy:
        step = max(1, CHUNK_BYTES // (4 * max(1, math.prod(job.shape[1:]))))
        yield from _copied(job, *((adapter, job.replace) if copy else (base, job.source)), step, arena)
        return
    rows = _Rows(job, base, adapter, plan, seed, arena)
    yield from (_serial(rows) if lanes is None else _overlapped(rows, lanes))


def _in_rows(job: Job, plan: MergePlan) -> bool:
    """Row blocks for matrices; vocabulary biases ([V] or [1, V], grown along the last axis) whole."""
    return len(job.shape) >= 2 and job.name not in plan.diagnosis.binding.vocab.biases


def _lanes(dev: str):
    """The CUDA streams the row blocks go through on a GPU; None on the CPU (blocks in turn). Run in
    the merge's own thread, whose current device becomes ``dev``: entering and leaving a stream's
    context sets the thread's current device each time, and cuda:0 by default would get a context
    (memory, and a refusal where it is exclusive to another process) when merging on cuda:1."""
    if dev == "cpu":
        return None
    import torch

    from inspector.streams import CudaLanes

    if torch.device(dev).index is not None:  # plain "cuda" is the thread's current device already
        torch.cuda.set_device(dev)
    return CudaLanes(dev)


def _produced(plan: MergePlan, base: TensorReader, adapter: TensorReader, seed: int) -> Iterator:
    """Every job's data in plan order: a whole tensor, or its row blocks followed by ``_END``."""
    arena, lanes = _Arena(), _lanes(plan.device)
    for job in plan.jobs:
        if _in_rows(job, plan):
            yield from _blocks(job, base, adapter, plan, seed, arena, lanes)
            yield _END
        else:
            yield _whole(job, base, adapter, plan, seed)


class _Ahead:
    """Runs ``items`` (reading and computing) in one thread, up to AHEAD blocks ahead of the caller,
    which writes them: on 2 cores the write()s into the page cache and the compute overlap. The
    writer stays in the main thread, so Ctrl-C, a full disk and the last input checks act as before."""

    def __init__(self, items: Iterator) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="merge-compute", daemon=True)
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
        except BaseException as exc:  # handed to the main thread, raised there
            self._put((False, exc))

    def _put(self, message: tuple[bool, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next(self):
        ok, value = self._queue.get()
        if not ok:
            raise value
        return value

    def rows(self) -> Iterator:
        while (block := self.next()) is not _END:
            yield block

    def close(self) -> None:
        """Stop the thread (it ends at its next block) and wait for it: no file is read after this."""
        self._stop.set()
        self._thread.join()


def execute(plan: MergePlan, out: str, *, seed: int = 0, force: bool = False, max_shard_size: int = 5_000_000_000, progress: Progress | None = None) -> MergeResult:
    """Stream every job through the writer; config, generation config and tokenizer files alongside."""
    diagnosis = plan.diagnosis
    base_root, adapter_root = diagnosis.base.root, diagnosis.adapter.checkpoint.root
    tok_source = Path(diagnosis.tokenizer.directory) if diagnosis.tokenizer else base_root  # --tokenizer, else adapter's, else base's
    extras = output_side_files(base_root, tok_source)
    folders = output_side_folders(base_root, tok_source)  # sentence-transformers modules, chat templates
    planned = [OutputTensor(j.name, j.dtype, j.shape) for j in plan.jobs]
    stats = {"tensors": len(plan.jobs), "lora": 0, "replaced": 0, "tokens": 0, "grown": 0, "copied": 0}
    inputs = [base_root, adapter_root] + ([tok_source] if tok_source not in (base_root, adapter_root) else [])
    stamps = diagnosis.base.stamps + diagnosis.adapter.checkpoint.stamps
    with CheckpointWriter(out, inputs=inputs, tensors=planned, max_shard_size=max_shard_size, force=force,
                          extra_bytes=side_bytes(extras, folders), stamps=stamps) as writer:
        with TensorReader(base_root, diagnosis.base.stamps) as base, TensorReader(adapter_root, diagnosis.adapter.checkpoint.stamps) as adapter:
            ahead = _Ahead(_produced(plan, base, adapter, seed))
            try:
                for job in plan.jobs:
                    stats["lora"] += len(job.deltas)
                    stats["replaced"] += job.replace is not None
                    stats["tokens"] += len(job.tokens)
                    stats["grown"] += job.shape != job.source.shape and job.replace is None
                    stats["copied"] += job.unchanged
                    if _in_rows(job, plan):
                        writer.write_rows(job.name, ahead.rows())
                    else:
                        writer.write(job.name, ahead.next())
                    if progress:
                        progress(job.source.nbytes, diagnosis.base.total_bytes)
            finally:
                ahead.close()  # before the readers close: the thread may still be reading
        writer.add_file("config.json", json.dumps(plan.config, indent=2) + "\n")
        copy_side(writer, extras, folders)
        writer.commit()
    return MergeResult(Path(out), plan, stats, tokenizer_from(extras, tok_source))


def _sleeping_omp_waiters() -> None:
    """Before torch loads: OpenMP threads waiting at the end of a parallel op sleep instead of
    spinning. The merge runs few, large ops (row blocks of up to CHUNK_BYTES), so sleeping costs
    nothing there, while spinning waiters took the CPU from the thread doing the work whenever the
    machine had other load (473 MB reference merge on 2 cores: ~6 s -> ~3.5 s wall, identical output).
    No effect once torch is loaded or when the user set OMP_WAIT_POLICY."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def merge_adapter(base_path: str, adapter_path: str, out: str, *, device: str = "auto", dtype: str = "auto", init: str | None = None,
                  seed: int = 0, force: bool = False, max_shard_size: int = 5_000_000_000, tokenizer_dir: str | None = None,
                  progress: Progress | None = None) -> MergeResult:
    """check -> plan -> stream. Refuses (exit 1, nothing written) what the merge cannot repair."""
    _sleeping_omp_waiters()
    interrupts.heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)
    if dtype not in ("auto", *DTYPES):
        raise UsageError("Invalid --dtype", None, f"{dtype!r} is not auto, bf16, fp16 or fp32", "Use --dtype auto|bf16|fp16|fp32.")
    if init is not None and init not in MERGE_INITS:  # subword_mean needs two tokenizers and the pieces' rows: resize's job
        raise UsageError("Invalid --init", None, f"{init} is for `lora-inspector resize --tokenizer DIR`",
                         f"Use --init {', '.join(MERGE_INITS)} with merge (or resize the base first).")
    diagnosis = run_check(base_path, adapter_path, tokenizer_dir, command="merge")
    plan = plan_merge(diagnosis, init=init, dtype=dtype, device=resolve_device(device))
    return execute(plan, out, seed=seed, force=force, max_shard_size=max_shard_size, progress=progress)
