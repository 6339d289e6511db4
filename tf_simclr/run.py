"""tf-simclr: the SimCLRv2 binary (pretrain, finetune, distill; train, eval, train_then_eval).

Flags keep the names of google-research/simclr where the meaning is the same, so its recipes
translate directly; recipes for this project live in ``flags/`` and are passed with
``--flagfile``. Every flag is validated (by the configuration dataclasses and the checks below)
before any data is read or any model is built.

    tf-simclr --flagfile=flags/fashion_mnist/pretrain.flags --model_dir=/tmp/run/pretrain
"""

from __future__ import annotations

import dataclasses
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
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def define_flags() -> None:
    """Define every flag of the binary (names of the reference implementation where shared)."""
    # Phase and schedule.
    flags.DEFINE_enum("train_mode", "pretrain", ["pretrain", "finetune", "distill"], "Phase.")
    flags.DEFINE_enum("mode", "train", ["train", "eval", "train_then_eval"], "What to run.")
    flags.DEFINE_string("model_dir", None, "Where checkpoints, logs and exports go.")
    flags.DEFINE_integer("train_batch_size", 512, "Global training batch (all replicas).")
    flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch.")
    flags.DEFINE_float("train_epochs", 100, "Training epochs (ignored if train_steps > 0).")
    flags.DEFINE_integer("train_steps", 0, "Training steps; overrides train_epochs when > 0.")
    flags.DEFINE_integer("eval_steps", 0, "Evaluation steps; 0 evaluates the whole split.")
    flags.DEFINE_integer("steps_per_loop", 50, "Steps per tf.function call (and log line).")
    flags.DEFINE_float("checkpoint_epochs", 1, "Checkpoint every this many epochs.")
    flags.DEFINE_integer("checkpoint_steps", 0, "Checkpoint every this many steps (overrides).")
    flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept in model_dir/ckpt.")
    flags.DEFINE_integer("keep_hub_module_max", 1, "Hub modules kept in model_dir/hub (0: none).")
    flags.DEFINE_string("checkpoint", "", "Initial weights: model_dir, checkpoint or hub module.")
    flags.DEFINE_string("teacher", "", "Distillation teacher: model_dir, checkpoint or hub module.")
    flags.DEFINE_bool("lineareval_while_pretraining", True, "On-line linear eval (stop-grad).")
    flags.DEFINE_bool("knn_monitor", True, "Weighted kNN accuracy at every pretrain checkpoint.")
    flags.DEFINE_integer("knn_k", 200, "Neighbours of the kNN monitor.")
    flags.DEFINE_float("knn_temperature", 0.1, "Temperature of the kNN monitor's votes.")
    flags.DEFINE_integer("knn_bank_size", 10000, "Training images in the kNN memory bank.")
    flags.DEFINE_integer("eval_timeout_seconds", 0, "mode=eval: wait this long for new ckpts.")
    # Distribution and speed.
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "")
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu.")
    flags.DEFINE_integer("logical_cpu_devices", 0, "Split the CPU into N devices (testing).")
    flags.DEFINE_enum("precision", "float32", list(PRECISIONS), "Compute precision.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the step (good on GPU/TPU).")
    # Model.
    flags.DEFINE_integer("resnet_depth", 50, "18, 34, 50, 101, 152 or 200.")
    flags.DEFINE_float("width_multiplier", 1, "ResNet width multiplier (e.g. 0.5, 1, 2, 3).")
    flags.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (0.0625 in the paper).")
    flags.DEFINE_float("se_ratio", 0.0, "Squeeze-excitation ratio (0 disables).")
    flags.DEFINE_bool("cifar_stem", False, "3x3 stride-1 stem without max-pool (small images).")
    flags.DEFINE_bool("global_bn", True, "Synchronise batch-norm statistics across replicas.")
    flags.DEFINE_float("batch_norm_decay", 0.9, "Batch-norm moving-average momentum.")
    flags.DEFINE_enum("proj_head_mode", "nonlinear", ["nonlinear", "linear", "none"], "")
    flags.DEFINE_integer("proj_out_dim", 128, "Projection output dimension.")
    flags.DEFINE_integer("num_proj_layers", 3, "Layers of the non-linear projection head.")
    flags.DEFINE_integer("ft_proj_selector", 0, "Head layer to fine-tune from (0 = encoder).")
    flags.DEFINE_bool("zero_init_logits_layer", False, "Zero-initialise the classifier.")
    flags.DEFINE_integer("fine_tune_after_block", -1, "Freeze up to this block (4 = linear).")
    # Data and augmentation.
    flags.DEFINE_string(
        "dataset", "fashion_mnist", "fashion_mnist, synthetic[:opts], folder:PATH or tfds:NAME."
    )
    flags.DEFINE_string("data_dir", None, "Data directory (TFDS data_dir, IDX folder, ...).")
    flags.DEFINE_string("train_split", "train", "Training split (e.g. train, train[:10%]).")
    flags.DEFINE_string("eval_split", "test", "Evaluation split.")
    flags.DEFINE_bool("cache_dataset", False, "Cache decoded images in memory.")
    flags.DEFINE_integer("shuffle_buffer", 0, "Shuffle buffer (0: chosen from the batch).")
    flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and label subsets.")
    flags.DEFINE_bool("deterministic", False, "Reproducible data order and augmentation.")
    flags.DEFINE_float("label_fraction", 0.0, "Class-balanced fraction of labels (e.g. 0.01).")
    flags.DEFINE_integer("labels_per_class", 0, "Labels per class (instead of a fraction).")
    flags.DEFINE_string("labels_subset_file", "", "File listing the labeled examples.")
    flags.DEFINE_integer("image_size", 224, "Side of the (square) network input.")
    flags.DEFINE_float("color_jitter_strength", 1.0, "Colour distortion strength s.")
    flags.DEFINE_enum(
        "color_jitter_mode",
        "simclrv2",
        ["simclrv2", "simclrv1"],
        "Brightness multiplicative (v2) or additive (v1).",
    )
    flags.DEFINE_bool("use_blur", None, "Gaussian blur (default: on above CIFAR sizes).")
    flags.DEFINE_bool("augment_jit_compile", True, "XLA-compile the batched augmentations.")
    # Objectives and optimizer.
    flags.DEFINE_enum("optimizer", "lars", ["lars", "momentum", "adam"], "Optimizer.")
    flags.DEFINE_float("learning_rate", 0.3, "Base learning rate (scaled by batch size).")
    flags.DEFINE_enum("learning_rate_scaling", "linear", ["linear", "sqrt"], "lr scaling rule.")
    flags.DEFINE_float("warmup_epochs", 10, "Linear warm-up epochs.")
    flags.DEFINE_float("weight_decay", 1e-6, "Weight decay (L2) coefficient.")
    flags.DEFINE_float("momentum", 0.9, "Momentum of LARS / SGD.")
    flags.DEFINE_bool("nesterov", False, "Nesterov momentum for LARS.")
    flags.DEFINE_float("eeta", 0.001, "LARS trust coefficient.")
    flags.DEFINE_float("temperature", 0.1, "NT-Xent temperature.")
    flags.DEFINE_bool("hidden_norm", True, "L2-normalise projections in NT-Xent.")
    flags.DEFINE_enum("loss_scale", "reference", ["reference", "paper"], "NT-Xent scale.")
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the supervised loss.")
    flags.DEFINE_float("distill_temperature", 1.0, "Distillation temperature tau.")
    flags.DEFINE_float("distill_alpha", 1.0, "Weight of distillation vs labels (eq. 4).")
    flags.DEFINE_bool("hinton_tau_squared", False, "Multiply the distillation loss by tau^2.")


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
        augment=_fields_from_flags(AugmentConfig, values),
        data=_fields_from_flags(DataConfig, values),
    )
    _check_combinations(config, values)
    return config


def _check_combinations(config, values: dict) -> None:
    """Checks that involve more than one configuration or the file system."""
    if config.train.train_mode == "distill" and config.model.fine_tune_after_block == 4:
        raise ValueError("--fine_tune_after_block=4 freezes the student; distill trains it.")
    for name in ("checkpoint", "teacher"):
        path = values[name]
        if path and not os.path.exists(path) and not os.path.exists(path + ".index"):
            raise ValueError(f"--{name}={path!r} does not exist.")
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
    from tf_simclr.training.strategy import configure_logical_cpus, create_strategy

    configure_logical_cpus(values["logical_cpu_devices"])
    if values["deterministic"]:
        # Weight initialisers draw from the global seed: without it two runs start apart.
        import tf_keras

        tf_keras.utils.set_random_seed(values["seed"])
    strategy = create_strategy(values["strategy"], values["tpu"])
    os.makedirs(config.train.model_dir, exist_ok=True)
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


def run_main() -> None:
    """Console-script entry point (``tf-simclr``)."""
    define_flags()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run_main()
