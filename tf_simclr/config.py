"""Configuration dataclasses: the only way library code is configured.

Binaries (``tf_simclr/run.py``, ``export/``) turn absl flags into these frozen dataclasses; every
library function takes them as arguments. Each class validates itself in ``__post_init__`` so that a
bad combination fails before any work starts, with a message that says what to change.
"""

from __future__ import annotations

import dataclasses

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("nonlinear", "linear", "none")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the encoder and heads (SimCLRv2 section 2, Table 1).

    ``num_classes == 0`` builds no supervised head. ``ft_proj_selector`` indexes
    ``[proj_head_input, proj_head_1, ..., proj_head_N]`` (negative values count from the end).
    ``fine_tune_after_block`` freezes everything up to and including that block group
    (0 = the stem, 4 = the whole encoder: linear evaluation); -1 trains everything.
    """

    resnet_depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    cifar_stem: bool = False
    batch_norm_decay: float = 0.9
    batch_norm_epsilon: float = 1e-5
    global_bn: bool = False
    proj_head_mode: str = "nonlinear"
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    ft_proj_selector: int = 0
    num_classes: int = 0
    zero_init_logits_layer: bool = False
    supervised_head_stop_gradient: bool = False
    fine_tune_after_block: int = -1
    dtype_policy: str = "float32"

    def __post_init__(self) -> None:
        _require(
            self.resnet_depth in RESNET_DEPTHS,
            f"resnet_depth={self.resnet_depth} is not supported; choose one of {RESNET_DEPTHS}.",
        )
        _require(
            self.width_multiplier > 0 and int(64 * self.width_multiplier) >= 1,
            f"width_multiplier={self.width_multiplier} must be > 0 (e.g. 0.25, 0.5, 1, 2, 3).",
        )
        _require(
            0.0 <= self.sk_ratio < 1.0,
            f"sk_ratio={self.sk_ratio} must be in [0, 1) (0 disables selective kernels; "
            "the paper uses 0.0625).",
        )
        _require(
            0.0 <= self.se_ratio < 1.0,
            f"se_ratio={self.se_ratio} must be in [0, 1) (0 disables squeeze-excitation).",
        )
        _require(
            0.0 < self.batch_norm_decay < 1.0,
            f"batch_norm_decay={self.batch_norm_decay} must be in (0, 1).",
        )
        _require(
            self.batch_norm_epsilon > 0,
            f"batch_norm_epsilon={self.batch_norm_epsilon} must be > 0.",
        )
        _require(
            self.proj_head_mode in PROJ_HEAD_MODES,
            f"proj_head_mode={self.proj_head_mode!r} must be one of {PROJ_HEAD_MODES}.",
        )
        _require(self.num_proj_layers >= 1, "num_proj_layers must be >= 1.")
        _require(self.proj_out_dim >= 1, "proj_out_dim must be >= 1.")
        _require(self.num_classes >= 0, "num_classes must be >= 0 (0 = no supervised head).")
        _require(
            -1 <= self.fine_tune_after_block <= 4,
            f"fine_tune_after_block={self.fine_tune_after_block} must be in [-1, 4].",
        )
        _require(
            self.dtype_policy in DTYPE_POLICIES,
            f"dtype_policy={self.dtype_policy!r} must be one of {DTYPE_POLICIES}.",
        )
        count = self.num_head_layers + 1
        _require(
            -count <= self.ft_proj_selector < count,
            f"ft_proj_selector={self.ft_proj_selector} is out of range: proj_head_mode="
            f"{self.proj_head_mode!r} with num_proj_layers={self.num_proj_layers} has {count} "
            f"selectable outputs, so use a value in [{-count}, {count - 1}].",
        )

    @property
    def num_head_layers(self) -> int:
        """Number of layers in the projection head (N in ``proj_head_1 .. proj_head_N``)."""
        return {"nonlinear": self.num_proj_layers, "linear": 1, "none": 0}[self.proj_head_mode]

    @property
    def uses_bottleneck(self) -> bool:
        return self.resnet_depth >= 50

    @property
    def encoder_output_dim(self) -> int:
        """Channels of ``final_avg_pool``: 512 (basic) or 2048 (bottleneck) times the width."""
        return int(512 * self.width_multiplier) * (4 if self.uses_bottleneck else 1)


OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")
CONTRASTIVE_LOSS_SCALES = ("reference", "paper")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (SimCLR section 4 and appendix B.1).

    ``learning_rate`` is the *base* rate: the peak rate is ``learning_rate * batch / 256``
    (``linear``) or ``learning_rate * sqrt(batch)`` (``sqrt``), reached after ``warmup_epochs``
    of linear warm-up and followed by cosine decay to 0. ``momentum`` is the LARS / SGD momentum;
    ``nesterov`` applies to LARS only (``momentum`` is always Nesterov SGD, as in the reference).
    ``weight_decay`` is folded into the LARS gradient, or added to the loss as an explicit L2 term
    for the other optimizers; ``eeta`` is the LARS trust coefficient.
    """

    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    eeta: float = 0.001
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0

    def __post_init__(self) -> None:
        _require(
            self.optimizer in OPTIMIZERS,
            f"optimizer={self.optimizer!r} must be one of {OPTIMIZERS}.",
        )
        _require(
            self.learning_rate > 0,
            f"learning_rate={self.learning_rate} must be > 0 (the paper uses 0.3 with linear "
            "scaling or 0.075 with sqrt scaling).",
        )
        _require(
            self.learning_rate_scaling in LEARNING_RATE_SCALINGS,
            f"learning_rate_scaling={self.learning_rate_scaling!r} must be one of "
            f"{LEARNING_RATE_SCALINGS}.",
        )
        _require(
            0.0 <= self.momentum < 1.0,
            f"momentum={self.momentum} must be in [0, 1) (the paper uses 0.9).",
        )
        _require(self.eeta > 0, f"eeta={self.eeta} must be > 0 (the paper uses 0.001).")
        _require(
            self.weight_decay >= 0,
            f"weight_decay={self.weight_decay} must be >= 0 (0 disables weight decay).",
        )
        _require(
            self.warmup_epochs >= 0,
            f"warmup_epochs={self.warmup_epochs} must be >= 0 (0 disables warm-up).",
        )


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters (SimCLR eq. 1, SimCLRv2 eq. 2-4).

    ``loss_scale`` picks the NT-Xent normalisation: ``reference`` is the reference
    implementation's ``mean(loss_a + loss_b)`` over local anchors, ``paper`` is SimCLR eq. 1's
    ``1/(2N)`` sum, half of it. ``distill_alpha`` weighs distillation against the supervised loss
    on labelled examples: ``(1 - alpha) * supervised + alpha * distillation``.
    ``hinton_tau_squared`` multiplies the distillation loss by ``tau**2`` (Hinton et al. 2015).
    """

    temperature: float = 0.1
    hidden_norm: bool = True
    loss_scale: str = "reference"
    label_smoothing: float = 0.0
    distill_temperature: float = 1.0
    distill_alpha: float = 1.0
    hinton_tau_squared: bool = False

    def __post_init__(self) -> None:
        _require(
            self.temperature > 0,
            f"temperature={self.temperature} must be > 0 (the paper uses 0.1 to 0.5).",
        )
        _require(
            self.loss_scale in CONTRASTIVE_LOSS_SCALES,
            f"loss_scale={self.loss_scale!r} must be one of {CONTRASTIVE_LOSS_SCALES}.",
        )
        _require(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing={self.label_smoothing} must be in [0, 1) (0 disables it).",
        )
        _require(
            self.distill_temperature > 0,
            f"distill_temperature={self.distill_temperature} must be > 0 (the paper uses 1.0).",
        )
        _require(
            0.0 <= self.distill_alpha <= 1.0,
            f"distill_alpha={self.distill_alpha} must be in [0, 1] (1 = distillation only).",
        )
