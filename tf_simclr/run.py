"""tf-simclr: the SimCLRv2 binary (pretrain, finetune, distill; train, eval, train_then_eval).

Flags keep the names of google-research/simclr where the meaning is the same, so its recipes
translate directly; recipes for this project live in ``flags/`` and are passed with
``--flagfile``. Every flag is validated (by the configuration dataclasses and the checks below)
before any data is read or any model is built.

    tf-simclr --flagfile=flags/fashion_mnist/pretrain.flags --model_dir=/tmp/run/pretrain
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from tf_simclr.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Define every flag of the binary (names of the reference implementation where shared)
    in ``flag_values`` (default: the global ``flags.FLAGS``; tests pass a fresh FlagValues)."""
    fv = flags.FLAGS if flag_values is None else flag_values
    define_bool = functools.partial(flags.DEFINE_bool, flag_values=fv)
    define_enum = functools.partial(flags.DEFINE_enum, flag_values=fv)
    define_float = functools.partial(flags.DEFINE_float, flag_values=fv)
    define_integer = functools.partial(flags.DEFINE_integer, flag_values=fv)
    define_string = functools.partial(flags.DEFINE_string, flag_values=fv)
    # Phase and schedule.
    define_enum("train_mode", "pretrain", ["pretrain", "finetune", "distill"], "Phase.")
    define_enum("mode", "train", ["train", "eval", "train_then_eval"], "What to run.")
    define_string("model_dir", None, "Where checkpoints, logs and exports go.")
    define_integer("train_batch_size", 512, "Global training batch (all replicas).")
    define_integer("eval_batch_size", 256, "Global evaluation batch.")
    define_float("train_epochs", 100, "Training epochs (ignored if train_steps > 0).")
    define_integer("train_steps", 0, "Training steps; overrides train_epochs when > 0.")
    define_integer("eval_steps", 0, "Evaluation steps; 0 evaluates the whole split.")
    define_integer("steps_per_loop", 50, "Steps per tf.function call (and log line).")
    define_float("checkpoint_epochs", 1, "Checkpoint every this many epochs.")
    define_integer("checkpoint_steps", 0, "Checkpoint every this many steps (overrides).")
    define_integer("keep_checkpoint_max", 5, "Checkpoints kept in model_dir/ckpt.")
    define_integer("keep_hub_module_max", 1, "Hub modules kept in model_dir/hub (0: none).")
    define_string("checkpoint", "", "Initial weights: model_dir, checkpoint or hub module.")
    define_string("teacher", "", "Distillation teacher: model_dir, checkpoint or hub module.")
    define_bool("lineareval_while_pretraining", True, "On-line linear eval (stop-grad).")
    define_bool("knn_monitor", True, "Weighted kNN accuracy at every pretrain checkpoint.")
    define_integer("knn_k", 200, "Neighbours of the kNN monitor.")
    define_float("knn_temperature", 0.1, "Temperature of the kNN monitor's votes.")
    define_integer("knn_bank_size", 10000, "Training images in the kNN memory bank.")
    define_integer("eval_timeout_seconds", 0, "mode=eval: wait this long for new ckpts.")
    # Distribution and speed.
    define_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "")
    define_string("tpu", "", "TPU address for --strategy=tpu.")
    define_integer("logical_cpu_devices", 0, "Split the CPU into N devices (testing).")
    define_enum("precision", "float32", list(PRECISIONS), "Compute precision.")
    define_bool("jit_compile", False, "XLA-compile the step (good on GPU/TPU).")
    # Model.
    define_integer("resnet_depth", 50, "18, 34, 50, 101, 152 or 200.")
    define_float("width_multiplier", 1, "ResNet width multiplier (e.g. 0.5, 1, 2, 3).")
    define_float("sk_ratio", 0.0, "Selective-kernel ratio (0.0625 in the paper).")
    define_float("se_ratio", 0.0, "Squeeze-excitation ratio (0 disables).")
    define_bool("cifar_stem", False, "3x3 stride-1 stem without max-pool (small images).")
    define_bool("global_bn", True, "Synchronise batch-norm statistics across replicas.")
    define_float("batch_norm_decay", 0.9, "Batch-norm moving-average momentum.")
    define_enum("proj_head_mode", "nonlinear", ["nonlinear", "linear", "none"], "")
    define_integer("proj_out_dim", 128, "Projection output dimension.")
    define_integer("num_proj_layers", 3, "Layers of the non-linear projection head.")
    define_integer("ft_proj_selector", 0, "Head layer to fine-tune from (0 = encoder).")
    define_bool("zero_init_logits_layer", False, "Zero-initialise the classifier.")
    define_integer("fine_tune_after_block", -1, "Freeze up to this block (4 = linear).")
    # Data and augmentation.
    define_string(
        "dataset", "fashion_mnist", "fashion_mnist, synthetic[:opts], folder:PATH or tfds:NAME."
    )
    define_string("data_dir", None, "Data directory (TFDS data_dir, IDX folder, ...).")
    define_string("train_split", "train", "Training split (e.g. train, train[:10%]).")
    define_string("eval_split", "test", "Evaluation split.")
    define_bool("cache_dataset", False, "Cache decoded images in memory.")
    define_integer("shuffle_buffer", 0, "Shuffle buffer (0: chosen from the batch).")
    define_integer("seed", 0, "Seed of data order, augmentation and label subsets.")
    define_bool("deterministic", False, "Reproducible data order and augmentation.")
    define_float("label_fraction", 0.0, "Class-balanced fraction of labels (e.g. 0.01).")
    define_integer("labels_per_class", 0, "Labels per class (instead of a fraction).")
    define_string("labels_subset_file", "", "File listing the labeled examples.")
    define_integer("image_size", 224, "Side of the (square) network input.")
    define_float("color_jitter_strength", 1.0, "Colour distortion strength s.")
    define_enum(
        "color_jitter_mode",
        "simclrv2",
        ["simclrv2", "simclrv1"],
        "Brightness multiplicative (v2) or additive (v1).",
    )
    define_float("crop_area_min", 0.08, "Smallest area of a pretraining crop (of the image).")
    define_bool("use_blur", None, "Gaussian blur (default: on above CIFAR sizes).")
    define_bool("augment_jit_compile", True, "XLA-compile the batched augmentations.")
    # Objectives and optimizer.
    define_enum("optimizer", "lars", ["lars", "momentum", "adam"], "Optimizer.")
    define_float("learning_rate", 0.3, "Base learning rate (scaled by batch size).")
    define_enum("learning_rate_scaling", "linear", ["linear", "sqrt"], "lr scaling rule.")
    define_float("warmup_epochs", 10, "Linear warm-up epochs.")
    define_float("weight_decay", 1e-6, "Weight decay (L2) coefficient.")
    define_float("momentum", 0.9, "Momentum of LARS / SGD.")
    define_bool("nesterov", False, "Nesterov momentum for LARS.")
    define_float("eeta", 0.001, "LARS trust coefficient.")
    define_float("temperature", 0.1, "NT-Xent temperature.")
    define_bool("hidden_norm", True, "L2-normalise projections in NT-Xent.")
    define_enum("loss_scale", "reference", ["reference", "paper"], "NT-Xent scale.")
    define_float("label_smoothing", 0.0, "Label smoothing of the supervised loss.")
    define_float("distill_temperature", 1.0, "Distillation temperature tau.")
    define_float("distill_alpha", 1.0, "Weight of distillation vs labels (eq. 4).")
    define_bool("hinton_tau_squared", False, "Multiply the distillation loss by tau^2.")
    # SimCLRv2's memory of negatives (pretraining).
    define_integer("memory_size", 0, "Queued memory-network projections (0: no memory).")
    define_float("memory_momentum", 0.999, "Moving-average momentum of the memory network.")
    define_integer("memory_warmup_steps", 0, "Steps before memory negatives enter the loss.")
    define_bool("export_memory_network", False, "Export the memory network, not the online.")


def _fields_from_flags(cls, values: dict, **overrides):
    """Build dataclass ``cls`` from the flags that share its field names."""
    names = {field.name for field in dataclasses.fields(cls)}
    kwargs = {name: values[name] for name in names if name in values}
    kwargs.update(overrides)
    return cls(**kwargs)


def configs_from_flags(values: dict):
    """Turn flag values into a RunConfig; raises ValueError naming the bad flag."""
    from tf_simclr.data import validate_dataset_name
    from tf_simclr.training.runner import RunConfig

    if not values.get("model_dir"):
        raise ValueError("--model_dir is required: where checkpoints and logs go.")
    validate_dataset_name(values["dataset"])
    model = _fields_from_flags(ModelConfig, values, dtype_policy=PRECISIONS[values["precision"]])
    train = _fields_from_flags(TrainConfig, values, init_checkpoint=values["checkpoint"])
    config = RunConfig(
        model=model,
        train=train,
        optim=_fields_from_flags(OptimConfig, values),
        loss=_fields_from_flags(LossConfig, values),
        augment=_fields_from_flags(
            AugmentConfig, values, crop_area_range=(values["crop_area_min"], 1.0)
        ),
        data=_fields_from_flags(DataConfig, values),
        memory=_fields_from_flags(MemoryConfig, values),
    )
    _check_combinations(config, values)
    return config


def _check_combinations(config, values: dict) -> None:
    """Checks that involve more than one configuration or the file system."""
    if config.train.train_mode == "distill" and config.model.fine_tune_after_block == 4:
        raise ValueError("--fine_tune_after_block=4 freezes the student; distill trains it.")
    memory_size = config.memory.memory_size
    if memory_size and config.train.train_mode != "pretrain":
        raise ValueError(
            f"--memory_size is a pretraining setting (got --train_mode="
            f"{config.train.train_mode}); drop it."
        )
    if memory_size % config.train.train_batch_size:
        raise ValueError(
            f"--memory_size={memory_size} must be a multiple of --train_batch_size="
            f"{config.train.train_batch_size}: every step writes one projection per image."
        )
    if values["teacher"] and config.train.train_mode != "distill":
        raise ValueError(
            f"--teacher is only used by --train_mode=distill (got --train_mode="
            f"{config.train.train_mode}); drop it, or use --checkpoint to start from weights."
        )
    from tf_simclr import checkpoints

    for name in ("checkpoint", "teacher"):
        path = values[name]
        if path and not checkpoints.is_hub_module(path):
            try:
                checkpoints.find_checkpoint(path)
            except FileNotFoundError as error:
                raise ValueError(f"--{name}: {error}") from error
    if values["strategy"] != "tpu" and values["tpu"]:
        raise ValueError("--tpu is only used with --strategy=tpu.")
    if (
        values["jit_compile"]
        and config.model.global_bn
        and values["strategy"] != "tpu"
        and (values["logical_cpu_devices"] > 1 or values["strategy"] == "multi_worker")
    ):
        raise ValueError(
            "--jit_compile with --global_bn needs cross-replica collectives inside XLA, which "
            "only TPUs provide here; use --noglobal_bn or --nojit_compile."
        )


def main(argv: list[str]) -> int:
    del argv
    values = flags.FLAGS.flag_values_dict()
    try:
        config = configs_from_flags(values)
    except (ValueError, FileNotFoundError) as error:
        print(f"tf-simclr: invalid flags: {error}", file=sys.stderr)
        return 2
    from tf_simclr.training.strategy import configure_logical_cpus, create_strategy, is_chief

    configure_logical_cpus(values["logical_cpu_devices"])
    if values["deterministic"]:
        # Weight initialisers draw from the global seed: without it two runs start apart.
        import tf_keras

        tf_keras.utils.set_random_seed(values["seed"])
    strategy = create_strategy(values["strategy"], values["tpu"])
    os.makedirs(config.train.model_dir, exist_ok=True)
    if is_chief(strategy):  # other workers of a multi-worker run share the chief's model_dir
        with open(os.path.join(config.train.model_dir, "flags.json"), "w", encoding="utf-8") as f:
            json.dump(values, f, indent=2, sort_keys=True, default=str)
    from tf_simclr.training.loop import NonFiniteLossError
    from tf_simclr.training.runner import run

    try:
        result = run(config, strategy)
    except NonFiniteLossError as error:
        logging.getLogger("tf_simclr").error("%s", error)
        return 3
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but an unknown flag or a bad value exits with 2 like every invalid flag."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"tf-simclr: invalid flags: {error}", file=sys.stderr)
        sys.exit(2)


def run_main() -> None:
    """Console-script entry point (``tf-simclr``)."""
    define_flags()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
    run_main()
