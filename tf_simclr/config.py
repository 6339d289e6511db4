"""Configuration dataclasses: the only way library code is configured.

Binaries (``tf-simclr``, ``tf-simclr-export``) turn absl flags into these frozen dataclasses;
every library function takes them as arguments. Each class validates itself in ``__post_init__``
so that a bad combination fails before any work starts, with a message that says what to change.

Every field is declared with :func:`setting`: its default, one line of help and, for a field
restricted to a set of values, those choices. ``tf-simclr`` generates its flags from them
(:mod:`tf_simclr.flag_schema`, issue 13), so each default, choice list and help text is written
once, here.

A :class:`RunConfig` defines one run completely, the strategy and precision included:
``tf_simclr.train(config)`` needs nothing else (issue 29).
"""

from __future__ import annotations

import dataclasses
from typing import Any

HELP = "help"
CHOICES = "choices"

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("nonlinear", "linear", "none")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def setting(default: object, help_text: str, choices: tuple = ()) -> Any:
    """A dataclass field that documents itself: ``metadata[HELP]`` is ``help_text`` (one line, as
    a flag's help) and ``metadata[CHOICES]`` the values the field accepts (empty: any value of
    its type). ``__post_init__`` still validates; the choices are what a flag offers."""
    return dataclasses.field(default=default, metadata={HELP: help_text, CHOICES: choices})


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
    ``initial_conv_before_bn``, ``reference_resnet_d`` and ``truncated_proj_head`` reproduce
    checkpoints of the reference implementation (google-research/simclr) exactly; the converter
    of :mod:`tf_simclr.reference` sets them (see :class:`tf_simclr.models.resnet.Shortcut`,
    :class:`~tf_simclr.models.resnet.Stem` and :class:`~tf_simclr.models.heads.ProjectionHead`).
    A truncated head's ``proj_out_dim`` is the encoder's output width, the width of its layers.
    ``global_bn`` is on by default, as in the reference implementation: batch-norm statistics
    are those of the global batch, across replicas. With one replica the runner builds plain
    batch norm instead (TensorFlow's faster fused kernel); code that builds a model on one
    device itself can pass ``global_bn=False`` for the same.
    """

    resnet_depth: int = setting(50, "ResNet depth.", RESNET_DEPTHS)
    width_multiplier: float = setting(1.0, "ResNet width multiplier (e.g. 0.5, 1, 2, 3).")
    sk_ratio: float = setting(0.0, "Selective-kernel ratio (0.0625 in the paper; 0 disables).")
    se_ratio: float = setting(0.0, "Squeeze-excitation ratio (0 disables).")
    cifar_stem: bool = setting(False, "3x3 stride-1 stem without max-pool (small images).")
    initial_conv_before_bn: bool = setting(
        False, "initial_conv endpoint before the stem's batch norm (the reference's)."
    )
    reference_resnet_d: bool = setting(
        False, "ResNet-D shortcuts pool as the reference does (also at stride 1, zeros counted)."
    )
    batch_norm_decay: float = setting(0.9, "Batch-norm moving-average momentum.")
    batch_norm_epsilon: float = setting(1e-5, "Batch-norm epsilon.")
    global_bn: bool = setting(True, "Synchronise batch-norm statistics across replicas.")
    proj_head_mode: str = setting(
        "nonlinear", "Projection head: an MLP, one linear layer or none.", PROJ_HEAD_MODES
    )
    num_proj_layers: int = setting(3, "Layers of the non-linear projection head.")
    proj_out_dim: int = setting(128, "Projection output dimension.")
    truncated_proj_head: bool = setting(
        False, "Every head layer is a hidden layer (the first layers of a deeper head)."
    )
    ft_proj_selector: int = setting(0, "Head layer to fine-tune from (0 = encoder).")
    num_classes: int = setting(0, "Classes of the supervised head (0: no supervised head).")
    zero_init_logits_layer: bool = setting(False, "Zero-initialise the classifier.")
    supervised_head_stop_gradient: bool = setting(
        False, "Stop the gradient at the supervised head's input (on-line linear probe)."
    )
    supervised_head_batch_norm: bool = setting(
        False, "Standardise the supervised head's input (parameter-free batch norm)."
    )
    fine_tune_after_block: int = setting(-1, "Freeze up to this block (4 = linear eval).")
    dtype_policy: str = setting(
        "float32", "Compute precision (Keras dtype policy; variables stay float32).", DTYPE_POLICIES
    )

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
        _require(
            not self.truncated_proj_head
            or (
                self.proj_head_mode == "nonlinear" and self.proj_out_dim == self.encoder_output_dim
            ),
            "truncated_proj_head needs proj_head_mode='nonlinear' and proj_out_dim equal to "
            f"the encoder's output width ({self.encoder_output_dim}): its layers are all hidden "
            "layers.",
        )
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

    @classmethod
    def from_dict(cls, values: dict, source: str) -> ModelConfig:
        """The config stored as ``dataclasses.asdict`` in ``source`` (a config.json, a hub
        module's asset); a field this version does not know is an error naming it."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source} has ModelConfig fields this tf-simclr does not know: {unknown}; "
                "it was written by another version of tf-simclr."
            )
        return cls(**values)

    @property
    def selected_head_output(self) -> int:
        """Non-negative index of the head output the supervised head reads."""
        return self.ft_proj_selector % (self.num_head_layers + 1)

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

    optimizer: str = setting("lars", "Optimizer.", OPTIMIZERS)
    learning_rate: float = setting(0.3, "Base learning rate (scaled by batch size).")
    learning_rate_scaling: str = setting(
        "linear", "Learning-rate scaling rule (batch / 256 or sqrt(batch)).", LEARNING_RATE_SCALINGS
    )
    momentum: float = setting(0.9, "Momentum of LARS / SGD.")
    nesterov: bool = setting(False, "Nesterov momentum for LARS.")
    eeta: float = setting(0.001, "LARS trust coefficient.")
    weight_decay: float = setting(1e-6, "Weight decay (L2) coefficient.")
    warmup_epochs: float = setting(10.0, "Linear warm-up epochs.")

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

    temperature: float = setting(0.1, "NT-Xent temperature.")
    hidden_norm: bool = setting(True, "L2-normalise projections in NT-Xent.")
    loss_scale: str = setting(
        "reference",
        "NT-Xent scale: the reference implementation's, or the paper's eq. 1 (half of it).",
        CONTRASTIVE_LOSS_SCALES,
    )
    label_smoothing: float = setting(0.0, "Label smoothing of the supervised loss.")
    distill_temperature: float = setting(1.0, "Distillation temperature tau.")
    distill_alpha: float = setting(1.0, "Weight of distillation vs labels (eq. 4).")
    hinton_tau_squared: bool = setting(False, "Multiply the distillation loss by tau^2.")

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

    memory_size: int = setting(0, "Queued memory-network projections (0: no memory).")
    memory_momentum: float = setting(0.999, "Moving-average momentum of the memory network.")
    memory_warmup_steps: int = setting(0, "Steps before memory negatives enter the loss.")
    export_memory_network: bool = setting(False, "Export the memory network, not the online one.")

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
# The fewest steps between two checkpoints of a cadence in epochs (issue 28): on a training set of
# a batch or two an epoch is a step, and a save (and the kNN monitor at each) per step would cost
# more than the training.
MIN_STEPS_BETWEEN_CHECKPOINTS = 10


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One phase of the SimCLRv2 pipeline (SimCLRv2 section 2: pretrain, fine-tune, distill).

    ``train_steps`` overrides ``train_epochs`` when > 0; ``checkpoint_steps`` overrides
    ``checkpoint_epochs`` when > 0. Epochs are counted in images seen (step x global batch /
    training examples); a cadence in epochs keeps checkpoints at least
    :data:`MIN_STEPS_BETWEEN_CHECKPOINTS` steps apart, and the last step is always saved. A
    ``train_batch_size`` larger than the training set is capped to it (by the runner).
    ``init_checkpoint`` (the reference's ``--checkpoint``) is a training checkpoint, a model_dir
    or an exported hub module to start fine-tuning from; ``teacher`` is the same for
    distillation. ``eval_steps == 0`` evaluates the whole split.
    A progress line is logged every ``log_every_steps`` steps and at the last step, whatever
    ``steps_per_loop`` and the checkpoint cadence are.
    """

    train_mode: str = setting("pretrain", "Phase.", TRAIN_MODES)
    mode: str = setting("train", "What to run.", RUN_MODES)
    model_dir: str = setting("", "Where checkpoints, logs and exports go (required).")
    train_batch_size: int = setting(512, "Global training batch (all replicas).")
    eval_batch_size: int = setting(256, "Global evaluation batch.")
    train_epochs: float = setting(100.0, "Training epochs (ignored if train_steps > 0).")
    train_steps: int = setting(0, "Training steps; overrides train_epochs when > 0.")
    eval_steps: int = setting(0, "Evaluation steps; 0 evaluates the whole split.")
    steps_per_loop: int = setting(50, "Steps per tf.function call.")
    log_every_steps: int = setting(
        100, "Log a progress line every this many steps (and at the last one)."
    )
    checkpoint_epochs: float = setting(
        1.0,
        f"Checkpoint every this many epochs, at least {MIN_STEPS_BETWEEN_CHECKPOINTS} steps apart.",
    )
    checkpoint_steps: int = setting(0, "Checkpoint every this many steps (overrides).")
    keep_checkpoint_max: int = setting(5, "Checkpoints kept in model_dir/ckpt.")
    keep_hub_module_max: int = setting(1, "Hub modules kept in model_dir/hub (0: all).")
    init_checkpoint: str = setting("", "Initial weights: model_dir, checkpoint or hub module.")
    teacher: str = setting("", "Distillation teacher: model_dir, checkpoint or hub module.")
    lineareval_while_pretraining: bool = setting(True, "On-line linear eval (stop-grad).")
    knn_monitor: bool = setting(True, "Weighted kNN accuracy at every pretrain checkpoint.")
    knn_k: int = setting(200, "Neighbours of the kNN monitor.")
    knn_temperature: float = setting(0.1, "Temperature of the kNN monitor's votes.")
    knn_bank_size: int = setting(10000, "Training images in the kNN memory bank.")
    jit_compile: bool = setting(False, "XLA-compile the step (good on GPU/TPU).")
    export_hub: bool = setting(True, "Export model_dir/hub/<step> when the phase ends.")
    eval_timeout_seconds: int = setting(0, "mode=eval: wait this long for new checkpoints.")
    allow_config_change: str = setting(
        "",
        "Comma-separated settings a resume may change (e.g. learning_rate,train_batch_size); "
        "each segment is recorded in config.json.",
    )

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
        _require(self.log_every_steps >= 1, "log_every_steps must be >= 1.")
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

    image_size: int = setting(224, "Side of the (square) network input.")
    color_jitter_strength: float = setting(1.0, "Colour distortion strength s.")
    color_jitter_mode: str = setting(
        "simclrv2", "Brightness multiplicative (v2) or additive (v1).", COLOR_JITTER_MODES
    )
    use_blur: bool | None = setting(None, "Gaussian blur (default: on above CIFAR sizes).")
    crop_area_range: tuple[float, float] = setting(
        (0.08, 1.0), "Area of a pretraining crop, as a fraction of the image: (low, high)."
    )
    crop_aspect_range: tuple[float, float] = setting(
        (3 / 4, 4 / 3), "Aspect ratio of a pretraining crop: (low, high)."
    )
    flip_probability: float = setting(0.5, "Probability of a horizontal flip.")
    color_jitter_probability: float = setting(0.8, "Probability of colour jitter.")
    grayscale_probability: float = setting(0.2, "Probability of turning a view grey.")
    blur_probability: float = setting(0.5, "Probability of blurring a view (blur on).")
    blur_sigma_range: tuple[float, float] = setting(
        (0.1, 2.0), "Standard deviation of the Gaussian blur: (low, high)."
    )
    eval_crop_proportion: float = setting(0.875, "Centre crop of evaluation images (side).")
    augment_jit_compile: bool = setting(True, "XLA-compile the batched augmentations.")

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
    ``synthetic[:options]``, ``tfds:NAME``, ``folder:PATH``); it may be unlabeled (a folder of
    images without class folders) for pretraining and distillation. ``label_dataset``, when set,
    is where distillation's labels come from instead (SimCLRv2 distils on every ImageNet image
    while its labels are a subset): its training split gives the labeled examples, mixed evenly
    into ``dataset``'s images. ``eval_dataset``, when set, is the labeled source of evaluation
    and of the kNN monitor (its ``train_split`` is the monitor's bank, its ``eval_split`` the
    queries); by default they read ``label_dataset``, else ``dataset``. At most one of
    ``label_fraction``
    (e.g. 0.01 or 0.1, class-stratified), ``labels_per_class`` or ``labels_subset_file`` selects
    the labeled examples of fine-tuning and distillation (SimCLRv2 section 4); subsets drawn with
    the same ``seed`` are nested. ``shuffle_buffer=0`` picks a size from the batch (as the
    reference: 50x the per-replica batch at <= 32 px, 10x above). ``deterministic`` keeps the
    element order fixed so that a run is reproducible from ``seed``.
    """

    dataset: str = setting(
        "fashion_mnist", "fashion_mnist, synthetic[:opts], folder:PATH or tfds:NAME."
    )
    eval_dataset: str = setting(
        "", "Labeled source of evaluation and the kNN monitor (default: label_dataset or dataset)."
    )
    label_dataset: str = setting(
        "",
        "Distillation: source of the labeled examples and of evaluation, while every image of "
        "dataset is distilled on (default: dataset).",
    )
    data_dir: str | None = setting(None, "Data directory (TFDS data_dir, IDX folder, ...).")
    train_split: str = setting("train", "Training split (e.g. train, train[:10%]).")
    eval_split: str = setting("test", "Evaluation split.")
    cache_dataset: bool = setting(False, "Cache decoded images in memory.")
    shuffle_buffer: int = setting(0, "Shuffle buffer (0: chosen from the batch).")
    seed: int = setting(0, "Seed of data order, augmentation and label subsets.")
    deterministic: bool = setting(False, "Reproducible data order and augmentation.")
    label_fraction: float = setting(0.0, "Class-balanced fraction of labels (e.g. 0.01).")
    labels_per_class: int = setting(0, "Labels per class (instead of a fraction).")
    labels_subset_file: str = setting("", "File listing the labeled examples.")
    max_image_megapixels: float = setting(
        50.0, "Skip (and count) images whose header announces more megapixels."
    )

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
        _require(self.max_image_megapixels > 0, "max_image_megapixels must be > 0.")
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

    @property
    def labels_source(self) -> str:
        """The source the labels come from: ``label_dataset``, else ``dataset``."""
        return self.label_dataset or self.dataset

    @property
    def evaluation_source(self) -> str:
        """The source evaluation and the kNN monitor read: ``eval_dataset``, else the labels'."""
        return self.eval_dataset or self.labels_source


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    """Where a run computes (SimCLR section 2: large batches across accelerators).

    ``strategy`` picks the ``tf.distribute`` strategy: ``default`` (one device), ``mirrored``
    (every local GPU, else every logical CPU device), ``multi_worker`` (the cluster of the
    ``TF_CONFIG`` environment variable) or ``tpu`` (at ``tpu``). ``logical_cpu_devices`` splits
    the CPU into that many devices before TensorFlow initialises (how multi-replica runs are
    tested without accelerators). Precision is ``ModelConfig.dtype_policy``, XLA
    ``TrainConfig.jit_compile``.
    """

    strategy: str = setting(
        "default",
        "tf.distribute strategy: one device, all local devices, TF_CONFIG's cluster or a TPU.",
        STRATEGIES,
    )
    tpu: str = setting("", "TPU address for --strategy=tpu.")
    logical_cpu_devices: int = setting(0, "Split the CPU into N devices (testing).")
    worker_timeout_seconds: int = setting(
        300, "multi_worker: give up when the other workers have not joined after this long."
    )

    def __post_init__(self) -> None:
        _require(
            self.strategy in STRATEGIES,
            f"strategy={self.strategy!r} must be one of {STRATEGIES}.",
        )
        _require(
            self.logical_cpu_devices >= 0,
            f"logical_cpu_devices={self.logical_cpu_devices} must be >= 0 (0: the CPU as it is).",
        )
        _require(
            self.worker_timeout_seconds >= 1,
            f"worker_timeout_seconds={self.worker_timeout_seconds} must be >= 1.",
        )
        _require(
            self.strategy == "tpu" or not self.tpu,
            f"--tpu={self.tpu} is only used with --strategy=tpu (got --strategy={self.strategy}).",
        )
        devices = self.logical_cpu_devices
        _require(
            devices <= 1 or self.strategy != "default",
            f"--logical_cpu_devices={devices} splits the CPU into {devices} devices, but "
            "--strategy=default trains on one of them; add --strategy=mirrored to train on all "
            f"{devices}, or drop --logical_cpu_devices.",
        )

    @property
    def multiple_replicas(self) -> bool:
        """Whether the strategy certainly runs more than one replica off TPU (split CPU or
        several workers): where batch-norm statistics need cross-replica collectives."""
        return self.strategy != "tpu" and (
            self.logical_cpu_devices > 1 or self.strategy == "multi_worker"
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every configuration of one phase (what ``tf-simclr``'s flags turn into, and what
    ``tf_simclr.train`` runs). The checks of combinations that a run refuses but a stored
    configuration may hold are :func:`tf_simclr.command_line.check_run`'s."""

    model: ModelConfig
    train: TrainConfig
    optim: OptimConfig
    loss: LossConfig
    augment: AugmentConfig
    data: DataConfig
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)

    def __post_init__(self) -> None:
        train = self.train
        _require(
            not self.data.label_dataset or train.train_mode == "distill",
            f"label_dataset is distillation's source of labels (got train_mode="
            f"{train.train_mode!r}); drop it, or pass the labeled source as dataset.",
        )
        _require(
            not (
                train.jit_compile and self.model.global_bn and self.distribution.multiple_replicas
            ),
            "--jit_compile with --global_bn needs cross-replica collectives inside XLA, which "
            "only TPUs provide here; use --noglobal_bn or --nojit_compile.",
        )

    def to_json(self) -> dict:
        return {
            field.name: dataclasses.asdict(getattr(self, field.name))
            for field in dataclasses.fields(self)
        }
