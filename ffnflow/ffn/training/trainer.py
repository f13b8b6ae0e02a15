"""The optimisation loop of FFN training: the model, its optimizer and the examples in flight.

A batch holds ``batch_size`` independent examples ("slots", as in google/ffn's
``get_batch``). Each step evaluates one FOV of every slot: the slot's next valid move
(:mod:`.moves`), its image and its current POM in logits ("seed": 0.95 at the centre,
0.05 elsewhere before the first FOV), and fits the soft target with sigmoid
cross-entropy (mean over voxels), one optimizer step per batch of FOVs. The predicted
logits are written back into the slot's seed, without backpropagation through time. A
slot whose moves are used up takes the next example.

On CUDA the model runs in ``channels_last_3d`` and, with ``precision`` ``bf16``, under
autocast (logits and loss in float32).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import logit

from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D, ModelArch
from ffnflow.ffn.predictor import resolve_device
from ffnflow.ffn.training.augment import AugmentOptions
from ffnflow.ffn.training.coordinates import example_margin
from ffnflow.ffn.training.examples import Example, ExampleOptions, TrainingVolume, make_example
from ffnflow.ffn.training.moves import Offset, example_offsets, next_move
from ffnflow.ffn.training.sampler import BalancedSampler

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
TRAIN_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainingOptions:
    """Options of a training run; sizes are voxels, z, y, x; probabilities 0..1.

    ``grad_clip``: largest gradient norm (0: no clipping). ``lr_schedule``: ``constant``
    or ``cosine`` (to 5 % of ``learning_rate`` at ``steps``). ``momentum``: of ``sgd``.
    ``max_minutes``: end the run (as finished) after this much training time, counted over
    resumes. Every ``checkpoint_every`` steps the training state is saved; every
    ``validate_every`` steps (0: never) the held-out crop is evaluated; every ``log_every``
    steps a row (mean loss since the last row) joins the log.
    """

    arch: ModelArch = field(default_factory=ModelArch)
    steps: int = 100000
    batch_size: int = 4
    optimizer: str = "adam"
    learning_rate: float = 0.001
    momentum: float = 0.9
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    init_activation: float = 0.95
    pad_value: float = 0.05
    move_threshold: float = 0.9
    target_on: float = 0.95
    target_off: float = 0.05
    shuffle_moves: bool = True
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    checkpoint_every: int = 1000
    validate_every: int = 1000
    log_every: int = 10
    max_minutes: float | None = None
    prefetch: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.arch, dict):
            arch = dict(self.arch)
            arch.pop("name", None)
            object.__setattr__(self, "arch", ModelArch(**arch))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentOptions(**self.augment))
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"ffn_training.optimizer {self.optimizer!r}: choose one of {list(OPTIMIZERS)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(
                f"ffn_training.lr_schedule {self.lr_schedule!r}: choose one of {list(LR_SCHEDULES)}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise InputError(
                f"ffn_training.precision {self.precision!r}: choose one of {list(TRAIN_PRECISIONS)}"
            )
        if self.batch_size < 1 or self.steps < 1:
            raise InputError(
                f"ffn_training: steps and batch_size must be >= 1 ({self.steps}, {self.batch_size})"
            )

    def example_options(self, augment: bool = True) -> ExampleOptions:
        return ExampleOptions(
            fov_size_zyx=self.arch.fov_size_zyx,
            deltas_zyx=self.arch.deltas_zyx,
            target_on=self.target_on,
            target_off=self.target_off,
            shuffle_moves=self.shuffle_moves,
            augment=self.augment if augment else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Slot:
    """An example in flight: its boxes on the device, ``(1, z, y, x)`` float32, ``seed``
    the POM logits so far, and the offsets it has not tried yet."""

    index: int
    image: torch.Tensor
    target: torch.Tensor
    seed: torch.Tensor
    remaining: list[Offset]


class FovBatcher:
    """Slots of examples and the FOVs cut from them, for a FOV size and move deltas."""

    def __init__(
        self,
        fov_size_zyx: Sequence[int],
        deltas_zyx: Sequence[int],
        init_activation: float,
        pad_value: float,
        move_threshold: float,
        device: torch.device,
    ) -> None:
        self.fov = tuple(int(v) for v in fov_size_zyx)
        self.deltas = tuple(int(v) for v in deltas_zyx)
        self.margin = example_margin(self.fov, self.deltas)
        self.box = tuple(2 * m + 1 for m in self.margin)
        self.device = device
        self.init_logit = float(logit(init_activation))
        self.pad_logit = float(logit(pad_value))
        self.move_logit = float(logit(move_threshold))
        self.offsets = example_offsets(self.deltas, None)
        flat = [
            np.ravel_multi_index(tuple(m + o for m, o in zip(self.margin, off)), self.box)
            for off in self.offsets
        ]
        self._offset_index = torch.tensor(flat, dtype=torch.long, device=device)

    def slot(
        self,
        example: Example,
        seed: torch.Tensor | None = None,
        remaining: list[Offset] | None = None,
    ) -> Slot:
        """A slot for an example: a fresh seed and all its offsets unless given (a resume)."""

        def put(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a)[None]
            if self.device.type == "cuda":
                t = t.pin_memory()
            return t.to(self.device, non_blocking=True)

        if seed is None:
            seed = torch.full(
                (1, *self.box), self.pad_logit, dtype=torch.float32, device=self.device
            )
            seed[(0, *self.margin)] = self.init_logit
        return Slot(
            example.index,
            put(example.image),
            put(example.target),
            seed.to(self.device),
            list(example.offsets) if remaining is None else [tuple(o) for o in remaining],
        )

    def pom_values(self, slots: Sequence[Slot]) -> torch.Tensor:
        """Every slot's POM logit at the centre of every move, ``(N, moves)`` on the device."""
        return torch.stack([s.seed.reshape(-1)[self._offset_index] for s in slots])

    def pom_at_offsets(self, slots: Sequence[Slot]) -> list[dict[Offset, float]]:
        """:meth:`pom_values` as one dict (offset -> logit) per slot (waits for the device)."""
        if not slots:
            return []
        return self.as_dicts(self.pom_values(slots).cpu().tolist())

    def as_dicts(self, values: list[list[float]]) -> list[dict[Offset, float]]:
        return [dict(zip(self.offsets, v)) for v in values]

    def fov_slices(self, offset: Offset) -> tuple[slice, ...]:
        return (slice(None),) + tuple(
            slice(d + o, d + o + f) for d, o, f in zip(self.deltas, offset, self.fov)
        )

    def cut(self, slots: Sequence[Slot], offsets: Sequence[Offset]) -> tuple[torch.Tensor, ...]:
        """Image, seed and target of each slot's FOV at its offset, ``(N, 1, z, y, x)``."""
        sel = [self.fov_slices(o) for o in offsets]
        image = torch.stack([s.image[c] for s, c in zip(slots, sel)])
        seed = torch.stack([s.seed[c] for s, c in zip(slots, sel)])
        target = torch.stack([s.target[c] for s, c in zip(slots, sel)])
        return image, seed, target

    def write_back(
        self, slots: Sequence[Slot], offsets: Sequence[Offset], logits: torch.Tensor
    ) -> None:
        """Store predicted logits ``(N, 1, z, y, x)`` as the slots' POM inside their FOVs."""
        with torch.no_grad():
            for s, o, out in zip(slots, offsets, logits.detach().float()):
                s.seed[self.fov_slices(o)] = out


class Trainer:
    """Model, optimizer and slots of a training run on ``volumes`` sampled by ``sampler``.

    ``init_state_dict``: weights to start from (fine-tuning); else a fresh model from
    ``options.seed``. :meth:`state` and :meth:`load_state` save and restore everything but
    the weights (``self.model.state_dict()``) for an exact resume.
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        sampler: BalancedSampler,
        options: TrainingOptions,
        init_state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.volumes = list(volumes)
        self.sampler = sampler
        self.options = options
        self.device = resolve_device(options.device)
        self.memory_format = (
            torch.channels_last_3d if self.device.type == "cuda" else torch.contiguous_format
        )
        self.autocast_dtype = TRAIN_PRECISIONS[options.precision]
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(options.seed)
        model = ConvStack3D(options.arch)
        if init_state_dict is not None:
            model.load_state_dict(init_state_dict)
        self.model = model.to(self.device, memory_format=self.memory_format)
        if options.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.model.parameters(), lr=options.learning_rate
            )
        else:
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=options.learning_rate, momentum=options.momentum
            )
        self.batcher = FovBatcher(
            options.arch.fov_size_zyx,
            options.arch.deltas_zyx,
            options.init_activation,
            options.pad_value,
            options.move_threshold,
            self.device,
        )
        self.example_options = options.example_options(augment=True)
        self.step = 0
        self.next_example = 0
        self.fovs = 0
        self.slots: list[Slot | None] = [None] * options.batch_size
        # The POM at the move centres after the last step's write-back, on its way to the
        # host while the device still runs that step's backward pass (see train_step).
        self._next_pom: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        self.source: Any = None  # something with next() -> Example (a Prefetcher), else made here

    # -- examples ---------------------------------------------------------------------------
    def make_example(self, index: int) -> Example:
        """Training example ``index`` of this run (a function of the seed and index alone)."""
        return make_example(
            self.volumes, self.sampler, self.example_options, self.options.seed, index
        )

    def _take_example(self) -> Example:
        if self.source is not None:
            example = self.source.next()
        else:
            example = self.make_example(self.next_example)
        assert example.index == self.next_example
        self.next_example += 1
        return example

    def _choose_moves(self) -> list[Offset]:
        """Each slot's next valid move; slots that have none take a new example (centre)."""
        if self._next_pom is not None:
            values, event = self._next_pom
            if event is not None:
                event.synchronize()
            pom = iter(self.batcher.as_dicts(values.tolist()))
            self._next_pom = None
        else:
            pom = iter(self.batcher.pom_at_offsets([s for s in self.slots if s is not None]))
        offsets = []
        for i, slot in enumerate(self.slots):
            move = (
                None
                if slot is None
                else next_move(slot.remaining, next(pom), self.batcher.move_logit)
            )
            if move is None:
                slot = self.slots[i] = self.batcher.slot(self._take_example())
                move = slot.remaining.pop(0)  # the centre: always tried first
            offsets.append(move)
        return offsets

    # -- optimisation -----------------------------------------------------------------------
    def learning_rate(self) -> float:
        o = self.options
        if o.lr_schedule == "cosine":
            return o.learning_rate * (
                0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(self.step / o.steps, 1.0)))
            )
        return o.learning_rate

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def forward(self, image: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        """Model logits (float32) for FOV batches ``(N, 1, z, y, x)``."""
        image = image.contiguous(memory_format=self.memory_format)
        seed = seed.contiguous(memory_format=self.memory_format)
        with self.autocast():
            return self.model(image, seed).float()

    def fit_batch(
        self,
        image: torch.Tensor,
        seed: torch.Tensor,
        target: torch.Tensor,
        after_forward: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on FOVs ``(N, 1, z, y, x)``; returns the logits the step
        predicted (before the update) and the loss (0-d). ``after_forward(logits)`` runs
        between the forward and the backward pass."""
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        logits = self.forward(image, seed)
        if after_forward is not None:
            after_forward(logits.detach())
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        return logits.detach(), loss.detach()

    def train_step(self) -> torch.Tensor:
        """One optimisation step on one FOV of every slot; returns the loss (a 0-d tensor)."""
        offsets = self._choose_moves()
        slots = list(self.slots)

        def write_back(logits: torch.Tensor) -> None:
            # The next moves depend only on these logits: start their transfer to the host
            # before the backward pass is queued, so that the host can prepare the next step
            # while the device computes gradients.
            self.batcher.write_back(slots, offsets, logits)
            values = self.batcher.pom_values(slots)
            if self.device.type == "cuda":
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._next_pom = (host, event)
            else:
                self._next_pom = (values, None)

        _, loss = self.fit_batch(*self.batcher.cut(slots, offsets), after_forward=write_back)
        self.step += 1
        self.fovs += len(slots)
        return loss

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything but the weights that an exact resume needs (tensors on the CPU)."""
        return {
            "step": self.step,
            "next_example": self.next_example,
            "fovs": self.fovs,
            "optimizer": self.optimizer.state_dict(),
            "slots": [
                None
                if s is None
                else {
                    "index": s.index,
                    "seed": s.seed.detach().cpu(),
                    "remaining": [list(o) for o in s.remaining],
                }
                for s in self.slots
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (load the weights into ``self.model`` separately)."""
        self._next_pom = None
        self.step = int(state["step"])
        self.next_example = int(state["next_example"])
        self.fovs = int(state["fovs"])
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["slots"]) != len(self.slots):
            raise InputError("training state: batch size differs from the options")
        self.slots = [
            None
            if s is None
            else self.batcher.slot(self.make_example(int(s["index"])), s["seed"], s["remaining"])
            for s in state["slots"]
        ]
