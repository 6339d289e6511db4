"""What a finished phase left behind: its checkpoints (``MODEL_DIR/ckpt/``), the ModelConfig in
its ``config.json``, or an exported TF-Hub module. Shared by the training binary (``--checkpoint``,
``--teacher``, evaluation) and the export binary."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tf_simclr import hub
from tf_simclr.config import ModelConfig
from tf_simclr.models import SimCLRModel

CKPT_SUBDIR = "ckpt"
CONFIG_FILENAME = "config.json"
MODEL_KEY = "model"


def is_hub_module(path: str) -> bool:
    """True for an exported TF-Hub module (a SavedModel directory)."""
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def find_checkpoint(path: str) -> tuple[str, str]:
    """``(checkpoint prefix, model_dir)`` for a model_dir, its ``ckpt/`` dir or a prefix."""
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.isdir(os.path.join(path, CKPT_SUBDIR)):
            ckpt_dir, model_dir = os.path.join(path, CKPT_SUBDIR), path
        else:
            ckpt_dir, model_dir = path, os.path.dirname(os.path.normpath(path))
        prefix = tf.train.latest_checkpoint(ckpt_dir)
        if prefix is None:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt_dir} (no 'checkpoint' file of tf.train.CheckpointManager);"
                " pass a model_dir that has been trained, its ckpt/ directory, a checkpoint "
                "prefix such as MODEL_DIR/ckpt/ckpt-500, or an exported hub/<step> module."
            )
        return prefix, model_dir
    if tf.io.gfile.exists(path + ".index"):
        return path, os.path.dirname(os.path.dirname(os.path.normpath(path)))
    raise FileNotFoundError(
        f"{path} is neither a model_dir, a checkpoint directory nor a checkpoint prefix "
        f"(there is no {path}.index)."
    )


def read_model_config(config_path: str) -> ModelConfig:
    """The ``ModelConfig`` stored under key ``"model"`` of a model_dir's ``config.json``."""
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(
            f"no model configuration at {config_path}; pass --config=PATH/config.json (the "
            "config.json of the run that wrote the checkpoint)."
        )
    with tf.io.gfile.GFile(config_path) as handle:
        values = json.load(handle)
    if MODEL_KEY not in values:
        raise ValueError(f"{config_path} has no {MODEL_KEY!r} key holding the ModelConfig.")
    return hub.model_config_from_dict(values[MODEL_KEY], config_path)


def load_model_config(source: str) -> ModelConfig:
    """The ModelConfig of a hub module, or of the run that wrote a model_dir / checkpoint."""
    if is_hub_module(source):
        return hub.load_config_from_hub(source)
    _, model_dir = find_checkpoint(source)
    return read_model_config(os.path.join(model_dir, CONFIG_FILENAME))


def restore_weights(model: SimCLRModel, source: str, include_supervised_head: bool) -> None:
    """Load the encoder and projection head (and optionally the supervised head) of ``model``
    from ``source``: a hub module, a model_dir or a checkpoint prefix. The source's
    architecture is checked against ``model``'s first, with the same message for every kind."""
    if is_hub_module(source):
        parts = ["encoder", "projection_head"]
        if include_supervised_head:
            parts.append("supervised_head")
        hub.restore_model_from_hub(
            model, source, require_all_parts=include_supervised_head, parts=parts
        )
        return
    parts = {"encoder": model.encoder, "projection_head": model.projection_head}
    if include_supervised_head and model.supervised_head is not None:
        parts["supervised_head"] = model.supervised_head
    prefix, model_dir = find_checkpoint(source)
    saved = read_model_config(os.path.join(model_dir, CONFIG_FILENAME))
    mismatches = hub.architecture_mismatches(saved, model.config, parts)
    if mismatches:
        raise ValueError(
            f"{source!r} holds a different architecture (saved vs requested): "
            f"{'; '.join(mismatches)}; pass the same architecture flags as its run."
        )
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts)).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()
