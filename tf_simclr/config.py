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
    ``supervised_head_batch_norm`` standardises the supervised head's input with a batch norm
    without scale and offset: the on-line linear probe of pretraining uses it, because raw
    ``final_avg_pool`` features are far from centred (mean squared norm ~260 for the Fashion-MNIST
    ResNet-18, one direction with ~190 of it) and make momentum SGD at the recipe's learning rate
    oscillate (the probe's loss climbed from 2.3 to 17 in 100 steps at LR 0.85).
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
    supervised_head_batch_norm: bool = False
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


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """SimCLRv2's memory of negatives (section 2, third change; MoCo's mechanism).

    A memory network, the exponential moving average (``memory_momentum``) of the online
    encoder and projection head, projects every batch; its last ``memory_size`` projections are
    extra negatives of NT-Xent. 0 turns the memory off. They enter the loss after
    ``memory_warmup_steps`` steps. ``export_memory_network`` exports the memory network as the
    phase's hub module instead of the online one.
    """

    memory_size: int = 0
    memory_momentum: float = 0.999
    memory_warmup_steps: int = 0
    export_memory_network: bool = False

    def __post_init__(self) -> None:
        _require(
            self.memory_size >= 0,
            f"memory_size={self.memory_size} must be >= 0 (0 turns the memory off; the paper "
            "uses 65536).",
        )
        _require(
            0.0 <= self.memory_momentum < 1.0,
            f"memory_momentum={self.memory_momentum} must be in [0, 1) (the paper uses 0.999).",
        )
        _require(
            self.memory_warmup_steps >= 0,
            f"memory_warmup_steps={self.memory_warmup_steps} must be >= 0.",
        )
        _require(
            self.memory_size > 0 or not self.export_memory_network,
            "export_memory_network needs a memory: set memory_size > 0.",
        )

    @property
    def enabled(self) -> bool:
        return self.memory_size > 0


TRAIN_MODES = ("pretrain", "finetune", "distill")
RUN_MODES = ("train", "eval", "train_then_eval")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One phase of the SimCLRv2 pipeline (SimCLRv2 section 2: pretrain, fine-tune, distill).

    ``train_steps`` overrides ``train_epochs`` when > 0; ``checkpoint_steps`` overrides
    ``checkpoint_epochs`` when > 0. ``init_checkpoint`` (the reference's ``--checkpoint``) is a
    training checkpoint, a model_dir or an exported hub module to start fine-tuning from;
    ``teacher`` is the same for distillation. ``eval_steps == 0`` evaluates the whole split.
    """

    train_mode: str = "pretrain"
    mode: str = "train"
    model_dir: str = ""
    train_batch_size: int = 512
    eval_batch_size: int = 256
    train_epochs: float = 100.0
    train_steps: int = 0
    eval_steps: int = 0
    steps_per_loop: int = 50
    checkpoint_epochs: float = 1.0
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    keep_hub_module_max: int = 1
    init_checkpoint: str = ""
    teacher: str = ""
    lineareval_while_pretraining: bool = True
    knn_monitor: bool = True
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank_size: int = 10000
    jit_compile: bool = False
    export_hub: bool = True
    eval_timeout_seconds: int = 0

    def __post_init__(self) -> None:
        _require(
            self.train_mode in TRAIN_MODES,
            f"train_mode={self.train_mode!r} must be one of {TRAIN_MODES}.",
        )
        _require(self.mode in RUN_MODES, f"mode={self.mode!r} must be one of {RUN_MODES}.")
        _require(bool(self.model_dir), "model_dir must be set: where checkpoints and logs go.")
        _require(self.train_batch_size >= 1, "train_batch_size must be >= 1.")
        _require(self.eval_batch_size >= 1, "eval_batch_size must be >= 1.")
        _require(
            self.train_epochs > 0 or self.train_steps > 0,
            "set train_epochs > 0 or train_steps > 0 (how long to train).",
        )
        _require(self.train_steps >= 0 and self.eval_steps >= 0, "step counts must be >= 0.")
        _require(self.steps_per_loop >= 1, "steps_per_loop must be >= 1.")
        _require(
            self.checkpoint_epochs > 0 or self.checkpoint_steps > 0,
            "set checkpoint_epochs > 0 or checkpoint_steps > 0.",
        )
        _require(self.keep_checkpoint_max >= 1, "keep_checkpoint_max must be >= 1.")
        _require(self.keep_hub_module_max >= 0, "keep_hub_module_max must be >= 0.")
        _require(self.knn_k >= 1, "knn_k must be >= 1.")
        _require(self.knn_temperature > 0, "knn_temperature must be > 0.")
        _require(
            self.train_mode != "distill" or bool(self.teacher),
            "train_mode=distill needs --teacher: a fine-tuned model_dir, checkpoint or hub "
            "module whose supervised head labels the unlabeled data.",
        )


COLOR_JITTER_MODES = ("simclrv2", "simclrv1")
CIFAR_IMAGE_SIZE = 32


def _is_range(value: tuple[float, float], low: float, high: float) -> bool:
    return len(value) == 2 and low <= value[0] <= value[1] <= high


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Data augmentation (SimCLR appendix A; SimCLRv2 section 4 keeps the same recipe).

    Pretraining views: Inception crop (area in ``crop_area_range``, aspect ratio in
    ``crop_aspect_range``, bicubic resize to ``image_size``), horizontal flip, colour distortion
    of strength ``color_jitter_strength`` (1.0 for ImageNet, 0.5 for CIFAR), Gaussian blur.
    ``color_jitter_mode`` picks the brightness change: ``simclrv2`` multiplies, ``simclrv1``
    adds. ``use_blur=None`` turns blur on above the CIFAR size (32) and off at or below it, as
    in the paper. Fine-tuning and distillation use crop + flip only; evaluation uses a centre
    crop of ``eval_crop_proportion`` of the shorter side (none at or below the CIFAR size).
    ``augment_jit_compile`` XLA-compiles the batched colour and blur ops (3-7x faster on CPU;
    independent of the training step's ``jit_compile``).
    """

    image_size: int = 224
    color_jitter_strength: float = 1.0
    color_jitter_mode: str = "simclrv2"
    use_blur: bool | None = None
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    color_jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    eval_crop_proportion: float = 0.875
    augment_jit_compile: bool = True

    def __post_init__(self) -> None:
        _require(
            self.image_size >= 8,
            f"image_size={self.image_size} is too small; use >= 8 (32 for CIFAR, 224 for "
            "ImageNet).",
        )
        _require(
            self.color_jitter_strength >= 0,
            f"color_jitter_strength={self.color_jitter_strength} must be >= 0 (1.0 for "
            "ImageNet, 0.5 for CIFAR, 0 disables the jitter but keeps random grayscale).",
        )
        _require(
            self.color_jitter_mode in COLOR_JITTER_MODES,
            f"color_jitter_mode={self.color_jitter_mode!r} must be one of {COLOR_JITTER_MODES}.",
        )
        _require(
            _is_range(self.crop_area_range, 1e-3, 1.0),
            f"crop_area_range={self.crop_area_range} must be (low, high) with "
            "0.001 <= low <= high <= 1, e.g. (0.08, 1.0).",
        )
        _require(
            _is_range(self.crop_aspect_range, 0.1, 10.0)
            and self.crop_aspect_range[0] <= 1.0 <= self.crop_aspect_range[1],
            f"crop_aspect_range={self.crop_aspect_range} must be (low, high) with "
            "0.1 <= low <= 1 <= high <= 10, e.g. (3/4, 4/3).",
        )
        for name in (
            "flip_probability",
            "color_jitter_probability",
            "grayscale_probability",
            "blur_probability",
        ):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"{name}={value} must be a probability in [0, 1].")
        _require(
            _is_range(self.blur_sigma_range, 1e-3, 100.0),
            f"blur_sigma_range={self.blur_sigma_range} must be (low, high) with "
            "0.001 <= low <= high, e.g. (0.1, 2.0).",
        )
        _require(
            0.0 < self.eval_crop_proportion <= 1.0,
            f"eval_crop_proportion={self.eval_crop_proportion} must be in (0, 1] (0.875 is "
            "the ImageNet standard).",
        )

    @property
    def blur_enabled(self) -> bool:
        """Whether pretraining views are blurred (default: only above the CIFAR size)."""
        if self.use_blur is None:
            return self.image_size > CIFAR_IMAGE_SIZE
        return self.use_blur

    @property
    def eval_center_crop(self) -> bool:
        """Whether evaluation takes a centre crop (not for images at or below the CIFAR size)."""
        return self.image_size > CIFAR_IMAGE_SIZE


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are streamed (batch sizes live in TrainConfig).

    ``dataset`` is a source string for :func:`tf_simclr.data.load_source` (``fashion_mnist``,
    ``synthetic[:options]``, ``tfds:NAME``, ``folder:PATH``). At most one of ``label_fraction``
    (e.g. 0.01 or 0.1, class-stratified), ``labels_per_class`` or ``labels_subset_file`` selects
    the labeled examples of fine-tuning and distillation (SimCLRv2 section 4); subsets drawn with
    the same ``seed`` are nested. ``shuffle_buffer=0`` picks a size from the batch (as the
    reference: 50x the per-replica batch at <= 32 px, 10x above). ``deterministic`` keeps the
    element order fixed so that a run is reproducible from ``seed``.
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    cache_dataset: bool = False
    shuffle_buffer: int = 0
    seed: int = 0
    deterministic: bool = False
    label_fraction: float = 0.0
    labels_per_class: int = 0
    labels_subset_file: str = ""

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "dataset must be set, e.g. 'fashion_mnist'.")
        _require(bool(self.train_split), "train_split must be set, e.g. 'train'.")
        _require(bool(self.eval_split), "eval_split must be set, e.g. 'test'.")
        _require(self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0 (0 = automatic).")
        _require(
            0.0 <= self.label_fraction <= 1.0,
            f"label_fraction={self.label_fraction} must be in (0, 1] (e.g. 0.01 or 0.1), or 0 "
            "to use every label.",
        )
        _require(self.labels_per_class >= 0, "labels_per_class must be >= 0 (0 = unused).")
        chosen = [
            name
            for name in ("label_fraction", "labels_per_class", "labels_subset_file")
            if getattr(self, name)
        ]
        _require(
            len(chosen) <= 1,
            f"{' and '.join(chosen)} are all set; choose one way to select the labeled subset.",
        )

    @property
    def uses_label_subset(self) -> bool:
        return bool(self.label_fraction or self.labels_per_class or self.labels_subset_file)
