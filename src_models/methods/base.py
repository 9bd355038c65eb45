"""The method interface every training method implements, and the registry by name.

A method owns its networks and optimisers. The trainer calls :meth:`Method.train_step`
once per iteration with a :class:`SliceSampler` (the method draws the labeled and unlabeled
batches it needs), and :meth:`Method.predict` at inference. Hyperparameters are a typed
dataclass per method (``Config``), whose fields carry a one-line help text: the CLI
(``--set key=value``), the plugin's "advanced" panel and the checkpoint JSON are all generated
from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_type_hints

import torch
from torch import nn

from src_models.data.sampler import SliceSampler
from src_models.device import autocast
from src_models.errors import SemisegError
from src_models.losses import ce_dice_loss


def param(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with its help text (and allowed values) in the field metadata."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Prediction:
    """probs: float (B, K, H, W) softmax; maps: name -> float (B, H, W) per-pixel maps."""

    probs: torch.Tensor
    maps: dict[str, torch.Tensor]


def confidence_map(probs: torch.Tensor) -> torch.Tensor:
    """Max class probability (B, H, W): 1/K (unsure) .. 1 (certain)."""
    return probs.max(dim=1).values


def poly_lr(iteration: int, total: int, power: float = 0.9) -> float:
    """Poly decay factor (1 - it/total)^power used by UniMatch/CrossMatch/CPS."""
    return (1 - min(iteration, total) / max(total, 1)) ** power


#: meanings of the maps most methods make (see :attr:`Method.map_meanings`)
MAP_MEANINGS = {
    "confidence": "probability of the predicted class: 1/K (a guess) to 1 (sure)",
    "pseudo": "the labels the method trains itself on (unsure pixels left out)",
}


class Method:
    """Base class. Subclasses set ``name``, ``description``, ``Config`` and ``map_names`` and
    implement :meth:`build`, :meth:`train_step` and :meth:`predict`.

    Attributes:
        networks: name -> module; everything in it is saved in checkpoints.
        optimizers: name -> optimiser; saved in checkpoints so a run can resume.
        base_lrs: the learning rate each optimiser's schedule scales.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: names of the per-pixel maps :meth:`predict` returns (besides the probabilities)
    map_names: ClassVar[tuple[str, ...]] = ("confidence",)
    #: what each map means and its range, for the viewer's legend and layer descriptions
    #: ("1/K" stands for one over the class count); merged over :data:`MAP_MEANINGS`
    map_meanings: ClassVar[dict[str, str]] = {}
    #: fraction of labeled slices held out for model selection (0: none)
    holdout_fraction: ClassVar[float] = 0.0
    #: networks :meth:`predict` uses, trained alone on the labeled slices by the supervised
    #: warm-up before the method's own step starts (empty: the method has no warm-up)
    warmup_networks: ClassVar[tuple[str, ...]] = ()
    #: learning rate of the warm-up's own AdamW optimiser (see :meth:`warmup_step`)
    warmup_lr: ClassVar[float] = 3e-3
    #: when the method pays off against the default, as measured (docs/benchmarks.md); shown
    #: by ``semiseg methods`` and under the method in the training dock ("" for the default)
    budget_note: ClassVar[str] = ""

    def __init__(
        self, config: Any, in_channels: int, num_classes: int, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.extra_state: dict[str, Any] = {}
        self.warmup_optimizer: torch.optim.Optimizer | None = None
        #: under torchrun: the DistributedDataParallel module :meth:`step_forward` runs
        #: through (:func:`src_models.training.distributed.distribute`); None otherwise
        self.distributed: nn.Module | None = None
        self.build()
        for net in self.networks.values():
            # channels_last was measured 15-20 % faster for these U-Nets on the CPU
            # (docs/benchmarks.md) and is the fast layout for CUDA tensor cores too.
            net.to(self.device, memory_format=torch.channels_last)
        self.base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in self.optimizers.items()}

    # -- to implement -------------------------------------------------------------------
    def build(self) -> None:
        """Create ``self.networks`` and ``self.optimizers``."""
        raise NotImplementedError

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        """One iteration: draw batches from ``data``, backward, step the optimisers.

        Returns named scalars for the log; must contain ``loss`` (the total minimised).
        """
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        """Class probabilities and maps for a normalised batch (B, C, H, W)."""
        raise NotImplementedError

    @classmethod
    def map_meaning(cls, name: str) -> str:
        """What map ``name`` means and its range ("" for a map nobody described)."""
        return {**MAP_MEANINGS, **cls.map_meanings}.get(name, "")

    def check_new_run(self) -> None:
        """Raise :class:`SemisegError` when a new model cannot start training (e.g. a file
        its parameters name is missing), before any work; a model loaded to predict or to
        continue is not checked (its checkpoint holds everything)."""

    def step_forward(self, compute: Callable[[], Any]) -> Any:
        """Run ``compute()``, the gradient-carrying forward passes of one step (every one of
        them: a step has one backward). Under torchrun it runs through DistributedDataParallel,
        so that backward averages the gradients over the processes."""
        return compute() if self.distributed is None else self.distributed(compute)

    # -- supervised warm-up (shared by every semi-supervised method) --------------------
    def warmup_logits(self, name: str, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of network ``name`` as :meth:`predict` uses it."""
        return self.networks[name](image)

    def warmup_step(self, data: SliceSampler) -> dict[str, float]:
        """One supervised step of every :attr:`warmup_networks` network, (CE + Dice)/2 with
        the batch's pixel weights. The labeled batch is split between the networks, so a
        warm-up step of a two-network method costs about one supervised step (each network
        sees half the batch) and the method is as good as the supervised baseline early,
        instead of paying 2-12 supervised steps per iteration for unlabeled terms computed
        from a network that knows nothing yet.

        The warm-up has its own optimiser, AdamW at :attr:`warmup_lr` (constant): measured on
        a left-atrium volume with 3 labeled slices, one minute of SGD at 0.01 (the methods'
        official optimiser, made for 30k-iteration GPU runs) reached Dice 0.04-0.23, AdamW at
        1e-3 0.74-0.76 and at 3e-3 0.78 (docs/benchmarks.md). The method's own optimisers
        take over after the warm-up, from the warmed-up weights."""
        names = self.warmup_networks
        if self.warmup_optimizer is None:
            self.warmup_optimizer = self._make_warmup_optimizer()
        batch = data.labeled()
        n = batch.image.shape[0]
        # BatchNorm needs 2+ samples per network: below that every network sees them all.
        parts = (
            torch.arange(n).tensor_split(len(names))
            if n >= 2 * len(names)
            else [torch.arange(n)] * len(names)
        )

        def forward() -> list[torch.Tensor]:
            with self.autocast():
                pairs = zip(names, parts, strict=True)
                return [self.warmup_logits(name, batch.image[idx]) for name, idx in pairs]

        losses = []
        for idx, logits in zip(parts, self.step_forward(forward), strict=True):
            mask = None if batch.mask is None else batch.mask[idx]
            losses.append(ce_dice_loss(logits.float(), batch.label[idx], mask))
        loss = torch.stack(losses).sum()
        self.warmup_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.warmup_optimizer.step()
        return {"loss": float(loss.detach()) / len(names)}

    def _make_warmup_optimizer(self) -> torch.optim.Optimizer:
        params = [p for name in self.warmup_networks for p in self.networks[name].parameters()]
        return torch.optim.AdamW(params, lr=self.warmup_lr, weight_decay=1e-4)

    def end_warmup(self, data: SliceSampler) -> None:
        """Called once when the warm-up ends (e.g. to start an EMA teacher from a student)."""

    # -- shared behaviour ---------------------------------------------------------------
    def lr_factor(self, iteration: int, total: int) -> float:
        """Multiplier of the base learning rates at ``iteration`` (default: poly 0.9)."""
        return poly_lr(iteration, total)

    def set_lr(self, iteration: int, total: int) -> float:
        """Apply :meth:`lr_factor`; returns the first optimiser's current lr (for logs)."""
        factor = self.lr_factor(iteration, total)
        first = None
        for key, opt in self.optimizers.items():
            for g, base in zip(opt.param_groups, self.base_lrs[key], strict=True):
                g["lr"] = base * factor
                first = g["lr"] if first is None else first
        return float(first or 0.0)

    def autocast(self):
        return autocast(self.device)

    def train(self) -> None:
        for net in self.networks.values():
            net.train()

    def eval(self) -> None:
        for net in self.networks.values():
            net.eval()

    def finish(self, data: SliceSampler) -> None:
        """Called once when training ends (e.g. to restore a selected checkpoint)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so it loads with ``torch.load(weights_only=True)``."""
        state = {
            "networks": {k: v.state_dict() for k, v in self.networks.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "extra": self.extra_state_dict(),
        }
        if self.warmup_optimizer is not None:
            state["warmup_optimizer"] = self.warmup_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        missing = set(self.networks) - set(state["networks"])
        if missing:
            raise SemisegError(
                f"checkpoint lacks network(s) {sorted(missing)} of method {self.name!r}: "
                "it was saved by another method or version; retrain or pick the right model"
            )
        for k, net in self.networks.items():
            net.load_state_dict(state["networks"][k])
        if with_optimizers:
            for k, opt in self.optimizers.items():
                if k in state.get("optimizers", {}):
                    opt.load_state_dict(state["optimizers"][k])
            if "warmup_optimizer" in state:
                self.warmup_optimizer = self._make_warmup_optimizer()
                self.warmup_optimizer.load_state_dict(state["warmup_optimizer"])
        self.load_extra_state_dict(state.get("extra", {}))

    def extra_state_dict(self) -> dict[str, Any]:
        """Method state besides networks/optimisers (tensors and plain values only)."""
        return dict(self.extra_state)

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.extra_state = dict(state)

    def parameter_count(self) -> int:
        return sum(p.numel() for n in self.networks.values() for p in n.parameters())


# -- registry ---------------------------------------------------------------------------
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from src_models import methods as _  # noqa: F401  (imports every method module)

    if name not in METHODS:
        raise SemisegError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_names() -> list[str]:
    from src_models import methods as _  # noqa: F401

    return list(METHODS)


# -- configs ----------------------------------------------------------------------------
#: how a user reads the parameters whose identifiers are not words (the training dock's
#: rows, `semiseg methods`)
PARAM_WORDS = {
    "lr": "learning rate",
    "tau": "threshold τ",
    "eta": "η (decoder share)",
    "w_kd": "distillation weight",
    "w_s": "strong-view weight",
    "cutmix_p": "CutMix probability",
    "strong_noise_p": "strong-view noise probability",
    "strong_cutout_p": "strong-view cutout probability",
    "partner_bn": "partner pass mode",
    "fm_weight": "FixMatch weight",
    "fm_target": "FixMatch target",
    "cps_weight": "CPS weight",
    "alpha": "teacher EMA decay α",
    "lambda_mse": "correction MSE weight λ",
    "lambda_kl": "entropy weight λ",
    "cpu_bf16": "bfloat16 on the CPU",
    "resnet_width": "ResNet width",
    "resnet_stem": "ResNet stem",
    "res_channels": "ResUNet channels",
    "channels": "U-Net channels",
    "discrepancy_k": "discrepancy passes K",
}


def param_words(name: str) -> str:
    """A parameter in words: ``lr`` -> "learning rate", ``weight_decay`` -> "weight decay"."""
    return PARAM_WORDS.get(name, name.replace("_", " "))


@dataclass
class ParamInfo:
    """Description of one hyperparameter, for the CLI and the GUI."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None


def config_params(config_cls: type) -> list[ParamInfo]:
    hints = get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(
            ParamInfo(
                f.name,
                hints[f.name],
                default,
                f.metadata.get("help", ""),
                f.metadata.get("choices"),
            )
        )
    return out


def _coerce(info: ParamInfo, value: Any) -> Any:
    kind = info.type
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = low in ("1", "true", "yes", "on")
            else:
                value = bool(value)
        elif kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(float(value)) if isinstance(value, str) else int(value)
        elif kind is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(value)
        elif kind is str:
            value = str(value)
        elif isinstance(value, str):  # tuples / lists of numbers: "16,32,64"
            value = tuple(
                float(v) if "." in v or "e" in v else int(v)
                for v in value.replace("(", "").replace(")", "").split(",")
                if v
            )
        else:
            value = tuple(value)
    except (TypeError, ValueError):
        raise SemisegError(
            f"parameter {info.name!r} expects {getattr(kind, '__name__', kind)}, got {value!r}"
        ) from None
    if info.choices is not None and value not in info.choices:
        raise SemisegError(
            f"parameter {info.name!r} must be one of {', '.join(map(str, info.choices))}, "
            f"got {value!r}"
        )
    _check_range(info, value)
    return value


#: parameters that are probabilities or shares: in [0, 1]
_UNIT_INTERVAL = ("tau", "alpha", "momentum", "dropout", "eta")


def _check_range(info: ParamInfo, value: Any) -> None:
    """Every method parameter is a non-negative, finite number (or numbers); sizes given as
    tuples of whole numbers (channel widths) are whole numbers of at least 1; shares and
    probabilities (``*_p``, ``*fraction*``, tau, momentum, dropout...) are at most 1."""
    numbers = value if isinstance(value, tuple) else (value,)
    if isinstance(value, bool) or not all(isinstance(v, (int, float)) for v in numbers):
        return
    name = info.name
    if any(not math.isfinite(v) or v < 0 for v in numbers):
        raise SemisegError(f"parameter {name} must be >= 0, got {value!r}")
    default = info.default if isinstance(info.default, tuple) else ()
    if default and all(isinstance(v, int) for v in default):
        if any(float(v) != int(v) or v < 1 for v in numbers):
            raise SemisegError(
                f"parameter {name!r} takes whole numbers of at least 1 (e.g. "
                f"{','.join(map(str, default))}), got {value!r}"
            )
    unit = name.endswith("_p") or "fraction" in name or name in _UNIT_INTERVAL
    if unit and any(v > 1 for v in numbers):
        raise SemisegError(f"parameter {name!r} is a share in [0, 1], got {value!r}")


def make_config(config_cls: type, values: dict[str, Any] | None = None) -> Any:
    """Build a config from strings or values, with clear errors for unknown keys/bad values."""
    params = {p.name: p for p in config_params(config_cls)}
    kwargs = {}
    for key, value in (values or {}).items():
        if key not in params:
            raise SemisegError(
                f"unknown parameter {key!r} for this method: valid ones are {', '.join(params)}"
            )
        kwargs[key] = _coerce(params[key], value)
    return config_cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
