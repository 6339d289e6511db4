"""Finding and reading a checkpoint of google-research/simclr in its three formats.

* **TF2 training checkpoint** (``tf2/run.py``): ``tf.train.Checkpoint(model=..., global_step=...,
  optimizer=...)`` saved by a ``CheckpointManager`` into the model_dir (``checkpoint``,
  ``ckpt-<n>.*``). Weights are named by object path under ``model/``.
* **TF2 SavedModel** (the released ``saved_model/`` directories; ``tf2/run.py`` writes
  ``MODEL_DIR/saved_model/<step>/``): a ``tf.Module`` holding the same Keras model as ``model``
  and its trainable variables as ``trainable_variables_list``. ``variables/variables`` is a
  TF2 checkpoint of that object graph, in which a variable is keyed by its first path in
  breadth-first order (``trainable_variables_list/17``), so every weight is found by walking
  the object graph stored with it, not by its key.
* **TF1 checkpoint** (``run.py`` of the TF1 code, the other released format): variables named
  ``base_model/...``, ``head_contrastive/...``, ``head_supervised/...``; optionally a copy of
  them under ``ema_model/`` (a moving average), optimizer slots (``.../Momentum``), the step
  and the memory of negatives.

A :class:`VariableStore` gives a weight's checkpoint key from its reference name
(:mod:`tf_simclr.reference.layout`), the keys of each part of the network, and every other
variable of the checkpoint sorted into what is deliberately skipped and what is unknown.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tf_simclr.hub import METADATA_FILENAME
from tf_simclr.reference.layout import TF1, TF2, Shape

TF2_CHECKPOINT = "TF2 training checkpoint"
TF2_SAVED_MODEL = "TF2 SavedModel"
TF1_CHECKPOINT = "TF1 checkpoint"
LAYOUTS = {TF2_CHECKPOINT: TF2, TF2_SAVED_MODEL: TF2, TF1_CHECKPOINT: TF1}
PARTS = ("encoder", "projection_head", "supervised_head")
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
MODEL_OBJECT = "model"
TF2_PART_OBJECTS = {
    "encoder": "resnet_model",
    "projection_head": "_projection_head",
    "supervised_head": "supervised_head",
}
TF1_PART_SCOPES = {
    "encoder": "base_model/",
    "projection_head": "head_contrastive/",
    "supervised_head": "head_supervised/",
}
EMA_SCOPE = "ema_model/"
TF1_SLOT_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1")
TF1_OPTIMIZER_STATE = ("beta1_power", "beta2_power")
TF1_STEP = "global_step"
TF2_STEP = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
TF2_COUNTERS = ("global_step", "save_counter")
OPTIMIZER_SLOTS = "optimizer slots"
OPTIMIZER_STATE = "optimizer state"
STEP_COUNTERS = "step counters"
MEMORY = "memory of negatives"
UNREAD_EMA = f"the {EMA_SCOPE} moving-average copy (read it instead with use_ema)"
UNREAD_ONLINE = f"the online weights (use_ema read the {EMA_SCOPE} copy)"
MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class Location:
    """A reference checkpoint on disk: its ``format``, the ``prefix`` that
    ``tf.train.load_checkpoint`` reads, and the ``path`` it was found from."""

    format: str
    prefix: str
    path: str


def _saved_model_prefix(directory: str) -> str:
    return os.path.join(directory, "variables", "variables")


def _is_saved_model(directory: str) -> bool:
    return tf.io.gfile.exists(os.path.join(directory, "saved_model.pb"))


def _object_graph(reader: tf.train.CheckpointReader):
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    return graph


def _child(graph, node: int | None, name: str) -> int | None:
    if node is None:
        return None
    for child in graph.nodes[node].children:
        if child.local_name == name:
            return child.node_id
    return None


def _checkpoint_format(prefix: str, tf2_format: str) -> str | None:
    """The reference format of the checkpoint at ``prefix`` (``tf2_format`` when it holds an
    object graph with ``model/resnet_model``), None when it holds something else."""
    reader = tf.train.load_checkpoint(prefix)
    names = reader.get_variable_to_shape_map()
    if OBJECT_GRAPH_KEY in names:
        graph = _object_graph(reader)
        model = _child(graph, 0, MODEL_OBJECT)
        return tf2_format if _child(graph, model, TF2_PART_OBJECTS["encoder"]) else None
    scopes = (TF1_PART_SCOPES["encoder"], EMA_SCOPE + TF1_PART_SCOPES["encoder"])
    return TF1_CHECKPOINT if any(name.startswith(scopes) for name in names) else None


def _locate_saved_model(directory: str, path: str) -> Location | None:
    if tf.io.gfile.exists(os.path.join(directory, "assets", METADATA_FILENAME)):
        return None  # a tf-simclr hub module
    prefix = _saved_model_prefix(directory)
    if not tf.io.gfile.exists(prefix + ".index"):
        return None
    found = _checkpoint_format(prefix, TF2_SAVED_MODEL)
    return Location(found, prefix, path) if found == TF2_SAVED_MODEL else None


def locate(path: str) -> Location | None:
    """The reference checkpoint ``path`` names, or None when it names none (a tf-simclr
    model_dir, checkpoint or hub module, another SavedModel, or nothing).

    ``path`` may be a SavedModel directory, a directory holding ``saved_model/`` (the released
    ``r50_1x_sk0/``) or ``saved_model/<step>/`` directories (the newest is read), a directory
    with a ``checkpoint`` file (the newest checkpoint; the reference's TF2 model_dir or a TF1
    checkpoint folder), or a checkpoint prefix (``.../ckpt-500``, ``.../model.ckpt-250228``).
    """
    if tf.io.gfile.isdir(path):
        if _is_saved_model(path):
            return _locate_saved_model(path, path)
        latest = tf.train.latest_checkpoint(path)
        if latest is not None:
            found = _checkpoint_format(latest, TF2_CHECKPOINT)
            return Location(found, latest, path) if found else None
        exported = os.path.join(path, "saved_model")
        if _is_saved_model(exported):
            return _locate_saved_model(exported, path)
        steps = sorted(
            int(name.rstrip("/"))
            for name in tf.io.gfile.listdir(path)
            if name.rstrip("/").isdigit() and _is_saved_model(os.path.join(path, name))
        )
        return _locate_saved_model(os.path.join(path, str(steps[-1])), path) if steps else None
    if tf.io.gfile.exists(path + ".index"):
        found = _checkpoint_format(path, TF2_CHECKPOINT)
        return Location(found, path, path) if found else None
    return None


def describe(path: str) -> str:
    """What is at ``path``, for the message of a path that holds no model this package reads."""
    if not tf.io.gfile.exists(path) and not tf.io.gfile.exists(path + ".index"):
        return f"there is nothing at {path} (and no {path}.index)"
    if tf.io.gfile.isdir(path) and _is_saved_model(path):
        if tf.io.gfile.exists(os.path.join(path, "assets", METADATA_FILENAME)):
            return f"{path} is a tf-simclr hub module"
        prefix = _saved_model_prefix(path)
        if not tf.io.gfile.exists(prefix + ".index"):
            return f"{path} is a SavedModel without variables"
        graph = _object_graph(tf.train.load_checkpoint(prefix))
        roots = sorted(child.local_name for child in graph.nodes[0].children)
        return (
            f"{path} is a SavedModel but neither a tf-simclr hub module (no assets/"
            f"{METADATA_FILENAME}) nor one of the reference's (no model.resnet_model object); "
            f"its root objects: {', '.join(roots[:MAX_LISTED])}"
        )
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            entries = sorted(tf.io.gfile.listdir(path))
            return (
                f"{path} is a directory without a checkpoint ('checkpoint' file) or a SavedModel"
                f" (saved_model.pb); it holds: {', '.join(entries[:MAX_LISTED]) or 'nothing'}"
            )
        path = latest
    if tf.io.gfile.exists(path + ".index"):
        reader = tf.train.load_checkpoint(path)
        names = sorted(reader.get_variable_to_shape_map())
        if OBJECT_GRAPH_KEY in names:
            graph = _object_graph(reader)
            if _child(graph, _child(graph, 0, MODEL_OBJECT), "encoder") is not None:
                return f"{path} is a tf-simclr training checkpoint"
        return (
            f"{path} is a checkpoint whose variables are neither tf-simclr's (model/encoder/..."
            " with the run's config.json) nor the reference's (model/resnet_model/... or "
            f"base_model/...); its first variables: {', '.join(names[:MAX_LISTED])}"
        )
    return f"{path} is a file, not a checkpoint prefix (there is no {path}.index)"


class VariableStore:
    """The variables of a reference checkpoint, found by the reference's names.

    ``key(name)`` is the checkpoint key of the weight the reference names ``name`` (a TF2 object
    path under ``model/`` or a TF1 variable name), None when absent. ``part_keys[part]`` are the
    keys of every weight of ``encoder``, ``projection_head`` and ``supervised_head``;
    ``skipped`` lists the keys deliberately not read, by reason; ``unknown`` the others.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self.layout = LAYOUTS[location.format]
        self.reader = tf.train.load_checkpoint(location.prefix)
        self.shapes: dict[str, Shape] = {
            name: tuple(shape)
            for name, shape in self.reader.get_variable_to_shape_map().items()
            if name != OBJECT_GRAPH_KEY
        }
        self.part_keys: dict[str, set[str]] = {}
        self.skipped: dict[str, list[str]] = {}
        self.unknown: list[str] = []
        self.step: int | None = None

    def key(self, name: str) -> str | None:
        raise NotImplementedError

    def shape(self, key: str) -> Shape:
        return self.shapes[key]

    def read(self, key: str) -> np.ndarray:
        return self.reader.get_tensor(key)

    def _sort(self, reason_of) -> None:
        """Sort every key that is in no part by ``reason_of(key)`` (None: unknown)."""
        read = set().union(*self.part_keys.values())
        for key in sorted(set(self.shapes) - read):
            reason = reason_of(key)
            if reason is None:
                self.unknown.append(key)
            else:
                self.skipped.setdefault(reason, []).append(key)


class TF2Store(VariableStore):
    """A TF2 training checkpoint or SavedModel: names are object paths under ``model``."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self.graph = _object_graph(self.reader)
        self.model = _child(self.graph, 0, MODEL_OBJECT)
        for part, name in TF2_PART_OBJECTS.items():
            self.part_keys[part] = self._keys_below(_child(self.graph, self.model, name))
        self._sort(self._reason)
        if TF2_STEP in self.shapes:
            self.step = int(self.read(TF2_STEP))

    def key(self, name: str) -> str | None:
        node = self.model
        for step in name.split("/"):
            node = _child(self.graph, node, step)
        return self._variable_key(node) if node is not None else None

    def _variable_key(self, node: int) -> str | None:
        for attribute in self.graph.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                return attribute.checkpoint_key
        return None

    def _keys_below(self, root: int | None) -> set[str]:
        """Keys of every variable reachable from ``root`` (none when it is absent)."""
        keys: set[str] = set()
        stack, seen = ([root] if root is not None else []), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            key = self._variable_key(node)
            if key is not None and key in self.shapes:
                keys.add(key)
            stack.extend(child.node_id for child in self.graph.nodes[node].children)
        return keys

    @staticmethod
    def _reason(key: str) -> str | None:
        if "/.OPTIMIZER_SLOT/" in key:
            return OPTIMIZER_SLOTS
        if key.startswith("optimizer/"):
            return OPTIMIZER_STATE
        if key.split("/")[0] in TF2_COUNTERS:
            return STEP_COUNTERS
        return None


class TF1Store(VariableStore):
    """A TF1 checkpoint: names are variable names. With ``use_ema`` every part that has a copy
    under ``ema_model/`` is read from it (the encoder must have one)."""

    def __init__(self, location: Location, use_ema: bool) -> None:
        super().__init__(location)
        self.scopes = {}
        for part, scope in TF1_PART_SCOPES.items():
            ema = use_ema and any(name.startswith(EMA_SCOPE + scope) for name in self.shapes)
            self.scopes[part] = (EMA_SCOPE if ema else "") + scope
        if use_ema and not self.scopes["encoder"].startswith(EMA_SCOPE):
            raise ValueError(
                f"{location.path} has no {EMA_SCOPE} copy of the encoder to read with use_ema; "
                "read its weights without use_ema."
            )
        for part, scope in self.scopes.items():
            self.part_keys[part] = {
                name
                for name in self.shapes
                if name.startswith(scope) and self._reason(name, use_ema) is None
            }
        self._sort(lambda name: self._reason(name, use_ema))
        if TF1_STEP in self.shapes:
            self.step = int(self.read(TF1_STEP))

    def key(self, name: str) -> str | None:
        part = next(part for part, scope in TF1_PART_SCOPES.items() if name.startswith(scope))
        full = self.scopes[part][: -len(TF1_PART_SCOPES[part])] + name
        return full if full in self.shapes else None

    def _reason(self, name: str, use_ema: bool) -> str | None:
        """Why ``name`` is not read, None for a weight of the network or an unknown variable."""
        if name.endswith(TF1_SLOT_SUFFIXES):
            return OPTIMIZER_SLOTS
        if name in TF1_OPTIMIZER_STATE:
            return OPTIMIZER_STATE
        if name == TF1_STEP:
            return STEP_COUNTERS
        if any(step.startswith("memory") for step in name.split("/")):
            return MEMORY
        part = next(
            (part for part, scope in TF1_PART_SCOPES.items() if name.startswith(scope)), None
        )
        if part is not None and use_ema and self.scopes[part].startswith(EMA_SCOPE):
            return UNREAD_ONLINE
        if name.startswith(EMA_SCOPE):
            ema_part = next(
                (p for p, s in TF1_PART_SCOPES.items() if name.startswith(EMA_SCOPE + s)), None
            )
            if ema_part is not None and not self.scopes[ema_part].startswith(EMA_SCOPE):
                return UNREAD_EMA
        return None


def open_store(location: Location, use_ema: bool = False) -> VariableStore:
    """The variables of the reference checkpoint at ``location``."""
    if location.format == TF1_CHECKPOINT:
        return TF1Store(location, use_ema)
    if use_ema:
        raise ValueError(
            f"use_ema reads the {EMA_SCOPE} copy of a TF1 checkpoint; {location.path} is a "
            f"{location.format}."
        )
    return TF2Store(location)
