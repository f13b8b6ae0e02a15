"""Forward passes of an FFN over FOVs, on CUDA when available, else on the CPU.

Numerics, per ``precision``:

- ``fp32``: the reference; every operation in float32 (on CUDA also with TF32 off, which
  torch otherwise allows in cuDNN convolutions).
- ``tf32`` (CUDA): float32 with the convolutions on TF32 tensor cores (10-bit mantissa);
  on the CPU the same as ``fp32``.
- ``bf16`` / ``fp16``: all convolutions but the first and the last (23 of 25 for the
  FIB-25 model, 97 % of the FLOPs) run under autocast in that type; the first convolution
  (which reads the POM logits), the residual stream, the final 1x1x1 convolution and the
  addition of the input logits stay float32, so neither the logits nor the accumulated
  residual are rounded (about half the error of plain autocast on FIB-25 FOVs).
  The returned logits are always float32.

Convolutions, per ``conv``: ``conv3d`` (cuDNN/oneDNN 3D convolutions), ``zsplit`` (each
3x3x3 convolution as a 2D convolution over every z section plus a shifted sum, module
:mod:`ffnflow.ffn.zsplit`) or ``triton`` (one fused Triton kernel per convolution,
module :mod:`ffnflow.ffn.triton_conv`; CUDA: 3940-4530 FOV/s on an H200, not faster than
z-split); these have the numerics of the mixed stack above (``residual="low"`` keeps the
z-split residual stream in the low precision instead: 1.15x faster at batch 256 on an
H200, and further from float32). ``auto`` takes
``zsplit`` compiled with ``torch.compile`` for bf16/fp16 on CUDA when Triton is present,
else ``conv3d``. On an H200, z-split ran the FIB-25 model at 4750-4850 FOV/s (218-222
TFLOP/s) against 2500 for cuDNN's 3D convolutions at batch 256
(``benchmarks/ffn_forward_variants.py``).
A compiled forward pass takes about 15 s to compile, once for ``fixed_batch``, else
twice (the second batch size compiles a graph for any batch size); calls without
``fixed_batch`` are then padded to a few sizes (:func:`batch_bucket`), each a cuDNN
plan.

The output for one FOV depends only on that FOV's image and POM as long as every call
has the same batch shape: set ``fixed_batch`` (every model call then holds exactly that
many FOVs, padded or split) when results must not depend on how FOVs were grouped, e.g.
to make :class:`ffnflow.ffn.batched.BatchedCanvas` agree bit for bit with the sequential
:class:`ffnflow.ffn.canvas.Canvas`. On the CPU ``fixed_batch=1`` costs nothing (batching
does not speed the CPU up) and reproduces the sequential canvas exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D
from ffnflow.ffn.zsplit import ZSplitStack

log = logging.getLogger(__name__)

PRECISIONS = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
CONVS = ("auto", "conv3d", "zsplit", "triton")
# torch.compile's limit on the shapes of one function (one per padded batch size).
_RECOMPILE_LIMIT = 32


def batch_bucket(n: int, step: int = 8) -> int:
    """The padded size of a batch of ``n`` FOVs (few distinct shapes, little padding): the
    next power of two up to ``step``, a multiple of ``step`` (8 by default) up to 64, of 16
    up to 128, of 32 up to 512, then the next power of two or 1.5x a power of two. A
    smaller ``step`` pads the engine's typical calls (30-40 FOVs) less, at the cost of more
    shapes (each a cuDNN plan)."""
    if step < 1 or step & (step - 1):
        raise InputError(f"batch_bucket: step {step} is not a power of two")
    if n <= step:
        return 1 << max(n - 1, 0).bit_length()
    for size, limit in ((step, 64), (16, 128), (32, 512)):
        if n <= limit:
            return -(-n // size) * size
    k = 1 << (n - 1).bit_length()
    return 3 * k // 4 if 3 * k // 4 >= n else k


def predict_into_with_predict(predictor, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """:meth:`FovPredictor.predict_into` through any predictor's ``predict(image, pom)``:
    the inputs of all parts concatenated, one call, the logits written back per part."""
    x = np.concatenate([inputs for inputs, _ in parts])
    logits = predictor.predict(x[:, 0], x[:, 1])
    offset = 0
    for _, out in parts:
        out[...] = logits[offset : offset + out.shape[0]]
        offset += out.shape[0]


def triton_available() -> bool:
    """Whether Triton can be imported (``torch.compile`` on CUDA and ``conv="triton"``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"ffn.device {device!r}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"ffn.device {device!r}: {exc}") from exc


# torch's own default, read before any predictor changes it (set_num_threads is global).
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def cpu_runs_natively(precision: str) -> bool:
    """Whether this CPU has instructions for ``precision``'s convolutions.

    fp32/tf32 always; bf16 with AVX512-BF16 or AMX; fp16 with AMX-FP16. Without them
    oneDNN emulates the type: on a 2-core AMD EPYC with AVX2 only, the FIB-25 forward
    pass took 28.8 s per FOV in bf16 and 21.3 s in fp16 against 0.37 s in fp32
    (2026-11-28).
    """
    cpu = torch.cpu
    try:
        if precision == "bf16":
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        if precision == "fp16":
            return bool(cpu._is_amx_fp16_supported())
    except AttributeError:  # a torch without these probes: assume the hardware has them
        return True
    return True


def default_threads() -> int:
    """CPU threads for torch: the cores this process may run on, at most torch's default
    (as it was at import, not as an earlier predictor with ``threads`` left it)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(_TORCH_DEFAULT_THREADS, usable))


def split_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], limit: int
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``(inputs, outputs)`` parts regrouped into chunks of at most ``limit`` FOVs (a part
    may be cut between two chunks); the order of the FOVs is kept."""
    chunks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    size = 0
    for inputs, outputs in parts:
        start = 0
        while start < inputs.shape[0]:
            if size == limit:
                chunks.append([])
                size = 0
            take = min(limit - size, int(inputs.shape[0]) - start)
            chunks[-1].append((inputs[start : start + take], outputs[start : start + take]))
            size += take
            start += take
    return [c for c in chunks if c]


class PendingPrediction:
    """A model call started by :meth:`FovPredictor.submit`: ``done()`` tells whether its
    logits have landed in the outputs, ``wait()`` blocks until they have. Calls that ran
    synchronously (on the CPU) are done at once."""

    def __init__(self, landed=None, timing=None, predictor: FovPredictor | None = None) -> None:
        self._landed = landed
        self._timing = timing
        self._predictor = predictor

    def done(self) -> bool:
        if self._landed is not None and not self._landed.query():
            return False
        self._finish()
        return True

    def wait(self) -> None:
        if self._landed is not None:
            self._landed.synchronize()
        self._finish()

    def _finish(self) -> None:
        self._landed = None
        if self._timing is not None and self._predictor is not None:
            start, end = self._timing
            self._predictor.gpu_seconds += start.elapsed_time(end) / 1e3
        self._timing = None


class _MixedStack(nn.Module):
    """ConvStack3D's forward with low-precision convolutions where rounding is harmless.

    The first convolution (it sees the POM logits, whose exact values matter near the
    thresholds; 3 % of the FLOPs), the residual stream, the final 1x1x1 convolution and
    the addition of the input logits stay float32; the other convolutions run under
    autocast.
    """

    def __init__(self, model: ConvStack3D, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def _low(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.conv0_a(torch.cat([image, pom_logits], dim=1).float())
        with self._low():
            x = m.conv0_b(torch.relu(x))
        x = x.float()
        for conv_a, conv_b in zip(m.res_a, m.res_b):
            with self._low():
                update = conv_b(torch.relu(conv_a(torch.relu(x))))
            x = x + update.float()
        return pom_logits.float() + m.conv_lom(torch.relu(x))


class FovPredictor:
    """Evaluates an FFN on batches of FOVs given as numpy arrays ``(N, z, y, x)``.

    ``precision``: ``fp32``, ``tf32``, ``bf16`` or ``fp16`` (see the module docstring);
    the returned logits are always float32. ``threads`` sets torch's intra-op CPU threads
    (default: the cores this process may use). ``memory_format``: ``channels_last``
    (NDHWC, what cuDNN and oneDNN prefer), ``contiguous`` (NCDHW) or ``auto``
    (channels_last: on a 2-core AMD EPYC, oneDNN's fp32 FIB-25 forward pass ran 1.31x
    faster than NCDHW at batch 1 and 1.5x at batch 4-16, the same logits to 6e-6,
    ``benchmarks/fov_throughput.py``). ``compile``: wrap the forward pass in
    ``torch.compile`` (None: for ``zsplit`` on CUDA only). ``conv``: ``auto``, ``conv3d``,
    ``zsplit`` or ``triton`` (module docstring). ``residual``: the residual stream
    of ``zsplit`` in float32 (``fp32``) or in the convolutions' precision
    (``low``: fewer bytes per voxel, faster on a GPU).
    ``fixed_batch``: every model call holds exactly this many FOVs (None: as many as asked).
    ``pow2_batches`` (without ``fixed_batch``): calls are padded to one of a few sizes
    (:func:`batch_bucket`: multiples of ``bucket_step`` up to 64), so that few batch
    shapes occur (each new shape costs cuDNN a plan, and a compiled forward pass a
    compilation).
    ``deterministic`` (CUDA): cuDNN picks its algorithms by fixed rules and only
    deterministic ones, so runs repeat bit for bit; False lets cuDNN time the candidates
    (``cudnn.benchmark``), which may be faster but can differ between runs. These and
    TF32 are process-wide cuDNN flags: they are set for each ``predict`` call and restored
    after it. The predictor works on its own copy of ``model``. :meth:`submit` starts a
    model call without waiting for it (on CUDA its copies run on a second stream), so that
    a driver can keep two calls in flight (:func:`ffnflow.ffn.workers.segment_canvases_in_workers`).
    """

    def __init__(
        self,
        model: ConvStack3D,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        memory_format: str = "auto",
        compile: bool | None = None,
        fixed_batch: int | None = None,
        deterministic: bool = True,
        pow2_batches: bool = False,
        conv: str = "auto",
        residual: str = "fp32",
        bucket_step: int = 8,
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"ffn.precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        if memory_format not in MEMORY_FORMATS:
            raise InputError(
                f"ffn.memory_format {memory_format!r}: choose one of {list(MEMORY_FORMATS)}"
            )
        if conv not in CONVS:
            raise InputError(f"ffn.conv {conv!r}: choose one of {list(CONVS)}")
        if residual not in ("fp32", "low"):
            raise InputError(f"ffn.residual {residual!r}: choose 'fp32' or 'low'")
        if bucket_step not in (1, 2, 4, 8):
            raise InputError(f"ffn.bucket_step {bucket_step!r}: choose 1, 2, 4 or 8")
        self.bucket_step = int(bucket_step)
        if fixed_batch is not None and int(fixed_batch) < 1:
            raise InputError(f"ffn.fixed_batch {fixed_batch!r}: must be >= 1")
        self.device = resolve_device(device)
        self.precision = precision
        self.fixed_batch = int(fixed_batch) if fixed_batch is not None else None
        self.pow2_batches = bool(pow2_batches) and self.fixed_batch is None
        if self.device.type == "cpu":
            torch.set_num_threads(int(threads) if threads else default_threads())
            if not cpu_runs_natively(precision):
                log.warning(
                    "ffn.precision %s on a CPU without %s instructions (torch CPU capability "
                    "%s): oneDNN emulates it, 60-80x slower than fp32 (measured on an AVX2 "
                    "CPU). Use ffn.precision fp32 on this machine",
                    precision,
                    "AVX512-BF16/AMX" if precision == "bf16" else "AMX-FP16",
                    torch.backends.cpu.get_cpu_capability(),
                )
        if memory_format == "auto":
            memory_format = "channels_last"
        self.memory_format = memory_format
        self._torch_format = (
            torch.channels_last_3d if memory_format == "channels_last" else torch.contiguous_format
        )
        # A private copy: the memory format and device are ours, not the caller's model's.
        self.model = (
            copy.deepcopy(model).to(self.device).eval().to(memory_format=self._torch_format)
        )
        self._forward: nn.Module = self.model
        low = precision in ("bf16", "fp16")
        if conv == "auto":
            cuda_low = self.device.type == "cuda" and low
            conv = "zsplit" if cuda_low and triton_available() else "conv3d"
        self.conv = conv
        if residual == "low" and conv != "zsplit":
            raise InputError(f"ffn.residual 'low': only with ffn.conv zsplit, not {conv}")
        self.residual = residual
        if conv == "triton" and not triton_available():
            raise InputError("ffn.conv 'triton': Triton is not installed")
        if conv in ("zsplit", "triton"):
            dtype = PRECISIONS[precision] if low else torch.float32
            if conv == "zsplit":
                stream = dtype if residual == "low" else torch.float32
                self._forward = ZSplitStack(self.model, dtype, stream).to(self.device)
            else:
                from ffnflow.ffn.triton_conv import TritonStack  # imports Triton

                self._forward = TritonStack(self.model, dtype).to(self.device)
        elif low:
            self._forward = _MixedStack(self.model, self.device.type, PRECISIONS[precision])
        self.deterministic = bool(deterministic)
        if compile is None:
            compile = conv == "zsplit" and self.device.type == "cuda"
        self.compiled = bool(compile)
        self._compile_unproven = self.compiled  # until its first call succeeds
        if compile:
            dynamo = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo, name):
                    setattr(dynamo, name, max(getattr(dynamo, name), _RECOMPILE_LIMIT))
            # One shape with fixed_batch; else torch's automatic dynamic shapes: the first
            # batch size compiles static, a second one recompiles with the batch dynamic.
            self._forward = torch.compile(
                self._forward, dynamic=False if self.fixed_batch else None
            )
            # Few batch shapes: few cuDNN plans.
            self.pow2_batches = self.fixed_batch is None
        self.fov_size_zyx = model.arch.fov_size_zyx
        self.deltas_zyx = model.arch.deltas_zyx
        self.fov_evaluations = 0
        self.model_calls = 0
        self._copies: torch.cuda.Stream | None = None  # host-device copies of submit()
        self.gpu_seconds = 0.0  # device time of the model calls of submit() that landed

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass on ``x`` ``(N, 2, z, y, x)`` (image, POM logits). If the first call
        of a compiled forward pass fails (no working compiler), falls back to uncompiled
        cuDNN/oneDNN 3D convolutions with a warning."""
        if not self._compile_unproven:
            return self._forward(x[:, 0:1], x[:, 1:2])
        try:
            out = self._forward(x[:, 0:1], x[:, 1:2])
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raises
            log.warning(
                "ffn: torch.compile of the %s forward pass failed (%s: %s); running it "
                "uncompiled with 3D convolutions",
                self.conv,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            self.conv, self.compiled, self._compile_unproven = "conv3d", False, False
            self._forward = self.model
            if self.precision in ("bf16", "fp16"):
                self._forward = _MixedStack(
                    self.model, self.device.type, PRECISIONS[self.precision]
                )
            return self._forward(x[:, 0:1], x[:, 1:2])
        self._compile_unproven = False
        return out

    @contextlib.contextmanager
    def _cudnn_flags(self) -> Iterator[None]:
        """cuDNN's process-wide flags as this predictor needs them, restored afterwards."""
        if self.device.type != "cuda":
            yield
            return
        cudnn = torch.backends.cudnn
        saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
        cudnn.benchmark = not self.deterministic
        cudnn.deterministic = self.deterministic
        cudnn.allow_tf32 = self.precision == "tf32"
        try:
            yield
        finally:
            cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved

    def pin_host_memory(self, array: np.ndarray) -> bool:
        """Page-lock the memory of ``array`` (CUDA) so that :meth:`predict_into` copies from
        and to it asynchronously, without the driver's staging copy; False where that is
        not possible (CPU, or CUDA refused). Undo with :meth:`unpin_host_memory` before the
        memory is freed."""
        if self.device.type != "cuda" or array.nbytes == 0:
            return False
        try:
            err = torch.cuda.cudart().cudaHostRegister(array.ctypes.data, array.nbytes, 0)
            return int(getattr(err, "value", err)) == 0
        except (AttributeError, RuntimeError, TypeError):
            return False

    def unpin_host_memory(self, array: np.ndarray) -> None:
        """Undo :meth:`pin_host_memory`."""
        try:
            torch.cuda.cudart().cudaHostUnregister(array.ctypes.data)
        except (AttributeError, RuntimeError, TypeError):
            pass

    def predict_into(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Predict FOVs given as ``(inputs, outputs)`` parts, writing the new POM logits into
        each ``outputs`` (float32 ``(n_i, z, y, x)``) in place.

        ``inputs`` is float32 ``(n_i, 2, z, y, x)``: channel 0 the normalised image, 1 the
        POM logits. All parts go through the model together (in calls of ``fixed_batch``
        FOVs when set, else padded as :meth:`predict` pads); they are copied straight to
        the device and back, with no host staging copy (asynchronously where
        :meth:`pin_host_memory` pinned them). The inputs may be reused once this returns.
        """
        if self.fixed_batch is None:
            self.submit(parts).wait()
            return
        pending = [self.submit(chunk) for chunk in split_parts(parts, self.fixed_batch)]
        for call in pending:
            call.wait()

    def submit(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> PendingPrediction:
        """Start one model call on ``parts`` (as :meth:`predict_into`; at most
        ``fixed_batch`` FOVs when that is set) and return without waiting for it on CUDA.

        The logits are in the ``outputs`` once the returned handle's ``wait()`` returns,
        and the ``inputs`` must not change before that. Calls run in the order submitted;
        their copies to and from the device run on a second CUDA stream, so that one
        call's copies overlap the model of another.
        """
        n = sum(int(i.shape[0]) for i, _ in parts)
        if n == 0:
            return PendingPrediction()
        if self.fixed_batch is not None:
            if n > self.fixed_batch:
                raise InputError(
                    f"FovPredictor.submit: {n} FOVs in one call, more than fixed_batch "
                    f"{self.fixed_batch}"
                )
            k = self.fixed_batch
        else:
            k = batch_bucket(n, self.bucket_step) if self.pow2_batches else n
        shape = (k, 2, *self.fov_size_zyx)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._cudnn_flags():
            compute = torch.cuda.current_stream(self.device) if cuda else None
            copy = self._copy_stream() if cuda else None
            with torch.cuda.stream(copy) if cuda else contextlib.nullcontext():
                # Allocated on the copy stream: its memory is not in use by queued model work.
                x = torch.empty(shape, dtype=torch.float32, device=self.device)
                offset = 0
                for inputs, _ in parts:
                    m = int(inputs.shape[0])
                    x[offset : offset + m].copy_(torch.from_numpy(inputs), non_blocking=cuda)
                    offset += m
            if cuda:
                compute.wait_stream(copy)
                x.record_stream(compute)
                start = torch.cuda.Event(enable_timing=True)
                start.record(compute)
            if k > n:  # padding: copies of the first FOV (outputs dropped)
                x[n:k].copy_(x[0:1].expand(k - n, *x.shape[1:]))
            if self.memory_format == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            out = self._call(x)[:n, 0].float()
            end = None
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record(compute)
                copy.wait_stream(compute)
                out.record_stream(copy)
            with torch.cuda.stream(copy) if cuda else contextlib.nullcontext():
                offset = 0
                for _, host in parts:
                    m = int(host.shape[0])
                    torch.from_numpy(host).copy_(out[offset : offset + m], non_blocking=cuda)
                    offset += m
                landed = None
                if cuda:
                    landed = torch.cuda.Event()
                    landed.record(copy)
        self.model_calls += 1
        self.fov_evaluations += n
        return PendingPrediction(landed, (start, end) if cuda else None, self)

    def _copy_stream(self) -> torch.cuda.Stream:
        if self._copies is None:
            self._copies = torch.cuda.Stream(self.device)
        return self._copies

    def predict(self, image: np.ndarray, pom_logits: np.ndarray) -> np.ndarray:
        """New POM logits (float32, N, z, y, x) for FOVs of normalised ``image``, ``pom_logits``
        (:meth:`predict_into` on one part)."""
        image = np.asarray(image, dtype=np.float32)
        out = np.empty(image.shape, dtype=np.float32)
        if image.shape[0]:
            inputs = np.stack([image, np.asarray(pom_logits, dtype=np.float32)], axis=1)
            self.predict_into([(inputs, out)])
        return out
