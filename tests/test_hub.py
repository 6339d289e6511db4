"""Tests of the TF-Hub module (tf_simclr.hub, tf_simclr.export_hub) through every consumer path.

One tiny model (ResNet-18, width 0.25, CIFAR stem, 16x16 images) is trained for a few steps under
a two-replica MirroredStrategy with synchronised batch norm; the module exported from it must
reproduce it in a fresh process, fine-tune in tf_keras, serve every signature through
``hub.KerasLayer`` and Keras 3's ``TFSMLayer``, and load back into a SimCLRModel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras as keras
from binary_runs import child_env, run_python
from tensorflow.core.protobuf import saved_model_pb2
from tolerances import ONEDNN_OFF, drift_tolerance, reduction_bound, relative_spread

from tf_simclr import ModelConfig, SimCLRModel, export_hub
from tf_simclr.checkpoints import restore_model_from_hub
from tf_simclr.hub import (
    export_to_model_dir,
    load_config_from_hub,
    read_module_info,
    save_hub_module,
)
from tf_simclr.model_dir import write_class_names
from tf_simclr.objectives import weight_decay_loss

SIZE = 16
OTHER_SIZE = 24
NUM_CLASSES = 4
CLASS_NAMES = ("red", "green", "blue", "yellow")  # the colours of COLOURS, in order
WEIGHT_DECAY = 1e-3
TRAIN_STEPS = 3
CONFIG = ModelConfig(
    resnet_depth=18,
    width_multiplier=0.25,
    cifar_stem=True,
    num_proj_layers=2,
    proj_out_dim=16,
    ft_proj_selector=1,
    num_classes=NUM_CLASSES,
    global_bn=True,
)
BACKBONE = [
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
]
HEADS = ["proj_head_input", "proj_head_1", "proj_head_2", "proj_head_output"]
# The documented signatures (export/SIGNATURES.md) of a module with every part of CONFIG.
FULL_SIGNATURES = [*BACKBONE, *HEADS, "logits_sup", "default"]
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)


def coloured_squares(count: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A learnable labelled set: a square of the class's colour on grey noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count).astype(np.int32)
    images = rng.uniform(0.3, 0.6, (count, size, size, 3)).astype(np.float32)
    side = size // 2
    for image, label in zip(images, labels, strict=True):
        top, left = rng.integers(0, size - side + 1, 2)
        image[top : top + side, left : left + side] = COLOURS[label]
    return images, labels


def endpoint_of(signature: str) -> str:
    return "final_avg_pool" if signature == "default" else signature


@dataclasses.dataclass
class TrainedRun:
    strategy: tf.distribute.Strategy
    model: SimCLRModel
    model_dir: str
    prefix: str
    full_module: str
    images: dict[int, np.ndarray]
    expected: dict[int, dict[str, np.ndarray]]
    # {size: {endpoint: atol}}: how far another computation of ``expected`` may be (see
    # endpoint_tolerances).
    atol: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)


ONEDNN_OFF_OUTPUTS = """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    module, expected = hub.load(sys.argv[1]), np.load(sys.argv[2])
    outputs = {}
    for key in (key for key in expected.files if key.startswith("images_")):
        size = key.split("_")[1]
        for name, value in module(tf.constant(expected[key]), training=False).items():
            outputs[f"{name}_{size}"] = value.numpy()
    np.savez(sys.argv[3], **outputs)
"""


def endpoint_tolerances(trained: TrainedRun, folder) -> dict[int, dict[str, float]]:
    """The absolute tolerance of each endpoint of ``trained.expected`` computed another way
    (the module in another process, the model restored elsewhere): 10x the spread of the
    module's outputs computed with oneDNN off (Eigen's kernels, another summation order
    everywhere) on this machine, floored at one float32 rounding (tests/tolerances.py)."""
    other = folder / "onednn_off.npz"
    expected = save_expected(trained, folder / "expected.npz")
    env = child_env(**ONEDNN_OFF)
    run_python(ONEDNN_OFF_OUTPUTS, trained.full_module, expected, str(other), env=env, check=True)
    reordered = np.load(other)
    return {
        size: {
            name: drift_tolerance(
                float(np.max(np.abs(reordered[f"{name}_{size}"] - value))), 1, np.abs(value).max()
            )
            for name, value in outputs.items()
        }
        for size, outputs in trained.expected.items()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, two_replica_strategy) -> TrainedRun:
    """CONFIG trained a few steps under 2-replica MirroredStrategy, checkpointed and exported."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("hub")
    strategy = two_replica_strategy
    with strategy.scope():
        model = SimCLRModel(CONFIG).build_for_size(SIZE)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        step = tf.Variable(0, dtype=tf.int64)
    images, labels = coloured_squares(8 * TRAIN_STEPS, seed=1)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    )

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels, outputs["logits_sup"]
            )
            head = tf.reduce_mean(tf.square(outputs["proj_head_output"]))
            loss = (tf.reduce_mean(cross_entropy) + head) / strategy.num_replicas_in_sync
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    @tf.function
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> None:
        strategy.run(replica_step, (images, labels))
        step.assign_add(1)

    moving_mean = model.encoder.stem.convs[0].bn.moving_mean
    for batch in dataset:
        train_step(*batch)
    assert np.abs(moving_mean.numpy()).max() > 0, "training did not update batch-norm statistics"

    model_dir = str(root / "run")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "ckpt"), 1)
    prefix = manager.save(checkpoint_number=int(step.numpy()))
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as handle:
        json.dump({"model": dataclasses.asdict(CONFIG)}, handle)
    write_class_names(model_dir, CLASS_NAMES)

    with strategy.scope():
        full_module = save_hub_module(
            model,
            str(root / "full"),
            weight_decay=WEIGHT_DECAY,
            step=int(step.numpy()),
            class_names=CLASS_NAMES,
        )
    rng = np.random.default_rng(2)
    inputs = {
        size: rng.uniform(0, 1, (3, size, size, 3)).astype(np.float32)
        for size in (SIZE, OTHER_SIZE)
    }
    expected = {
        size: {name: value.numpy() for name, value in model(x, training=False).items()}
        for size, x in inputs.items()
    }
    run = TrainedRun(strategy, model, model_dir, prefix, full_module, inputs, expected)
    run.atol = endpoint_tolerances(run, root)
    return run


@pytest.fixture(scope="module")
def encoder_module(trained, tmp_path_factory) -> str:
    """An encoder-only module exported outside the strategy scope with export_to_model_dir."""
    model_dir = str(tmp_path_factory.mktemp("encoder_run"))
    return export_to_model_dir(
        trained.model,
        model_dir,
        TRAIN_STEPS,
        keep_hub_module_max=1,
        include_projection_head=False,
        include_supervised_head=False,
        weight_decay=WEIGHT_DECAY,
    )


def save_expected(trained: TrainedRun, path) -> str:
    arrays = {f"images_{size}": images for size, images in trained.images.items()}
    for size, outputs in trained.expected.items():
        arrays.update({f"{name}_{size}": value for name, value in outputs.items()})
    for size, tolerances in trained.atol.items():
        arrays.update({f"atol_{name}_{size}": value for name, value in tolerances.items()})
    np.savez(path, **arrays)
    return str(path)


FRESH_PROCESS_CHECK = """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    path, expected_path, signatures = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    expected = np.load(expected_path)
    module = hub.load(path)
    assert sorted(module.signatures) == sorted(signatures), sorted(module.signatures)
    endpoints = [name for name in signatures if name != "default"]
    checked = 0
    sizes = sorted(int(key.split("_")[1]) for key in expected.files if key.startswith("images_"))
    assert len(sizes) == 2, sizes
    for size in sizes:
        images = tf.constant(expected[f"images_{size}"])
        outputs = module(images, training=False)
        assert sorted(outputs) == sorted(endpoints), sorted(outputs)
        for name in endpoints:  # bound: trained.atol (endpoint_tolerances)
            atol = expected[f"atol_{name}_{size}"]
            np.testing.assert_allclose(outputs[name], expected[f"{name}_{size}"], atol=atol)
            checked += 1
        for name in signatures:
            result = module.signatures[name](images=images)
            assert list(result) == [name], list(result)
            endpoint = "final_avg_pool" if name == "default" else name
            atol = expected[f"atol_{endpoint}_{size}"]
            np.testing.assert_allclose(result[name], expected[f"{endpoint}_{size}"], atol=atol)
            checked += 1
    print("checked", checked)
"""


def test_fresh_process_reproduces_in_memory_model(trained, tmp_path):
    expected = save_expected(trained, tmp_path / "expected.npz")
    output = run_python(
        FRESH_PROCESS_CHECK, trained.full_module, expected, json.dumps(FULL_SIGNATURES), check=True
    ).stdout
    assert f"checked {2 * (2 * len(FULL_SIGNATURES) - 1)}" in output


def sync_batch_norm_traces(graph_def: tf.compat.v1.GraphDef) -> set[str]:
    """Ops that only synchronised batch norm leaves: collectives and custom-gradient markers."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    found = {node.op for node in nodes if node.op.startswith(("Collective", "Nccl"))}
    found |= {f"{node.op}[_gradient_op_type]" for node in nodes if "_gradient_op_type" in node.attr}
    return found


def test_exported_graph_has_no_sync_batch_norm_ops(trained):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(trained.full_module, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    assert sync_batch_norm_traces(saved_model.meta_graphs[0].graph_def) == set()
    # The check detects what a sync-BN model leaves in a training-mode graph.
    forward = tf.function(lambda images: trained.model(images, training=True)["logits_sup"])
    graph = forward.get_concrete_function(tf.TensorSpec([2, SIZE, SIZE, 3])).graph
    assert sync_batch_norm_traces(graph.as_graph_def()) != set()


def test_module_metadata_and_config(trained):
    info = read_module_info(trained.full_module)
    assert info.parts == ("encoder", "projection_head", "supervised_head")
    assert list(info.signatures) == FULL_SIGNATURES
    assert info.weight_decay == WEIGHT_DECAY
    assert info.step == TRAIN_STEPS
    assert info.class_names == CLASS_NAMES
    assert load_config_from_hub(trained.full_module) == dataclasses.replace(CONFIG, global_bn=False)


def test_class_names_travel_only_with_the_supervised_head(trained, encoder_module, tmp_path):
    # A consumer without tf_simclr reads them from the loaded module's asset, line i for logit i.
    asset = hub.load(trained.full_module).class_names.asset_path.numpy().decode()
    with open(asset, encoding="utf-8") as handle:
        assert tuple(handle.read().splitlines()) == CLASS_NAMES
    assert read_module_info(encoder_module).class_names == ()
    assert not os.path.exists(os.path.join(encoder_module, "assets", "classes.txt"))
    with pytest.raises(ValueError, match="2 class names for a supervised head of"):
        save_hub_module(trained.model, str(tmp_path / "bad"), class_names=CLASS_NAMES[:2])
    # Exporting a run's checkpoint takes them from its classes.txt.
    exported = export_hub.export_checkpoint(
        trained.model_dir, export_dir=str(tmp_path / "from_run")
    )
    assert read_module_info(exported).class_names == CLASS_NAMES


def test_keras_layer_serves_every_signature_as_dict(trained):
    module = hub.load(trained.full_module)
    images = trained.images[SIZE]
    for name in FULL_SIGNATURES:
        handle = trained.full_module if name == "default" else module
        layer = hub.KerasLayer(handle, signature=name, signature_outputs_as_dict=True)
        outputs = layer(images)
        assert list(outputs) == [name]
        endpoint = endpoint_of(name)  # bound: trained.atol (endpoint_tolerances)
        np.testing.assert_allclose(
            outputs[name], trained.expected[SIZE][endpoint], atol=trained.atol[SIZE][endpoint]
        )


TFSM_LAYER_CHECK = """
    import json, sys
    import keras
    import numpy as np
    import tensorflow as tf

    assert keras.version().startswith("3."), keras.version()
    path, expected_path, signatures = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    expected = np.load(expected_path)
    size = min(int(key.split("_")[1]) for key in expected.files if key.startswith("images_"))
    images = expected[f"images_{size}"]
    module = tf.saved_model.load(path)
    for name in signatures:
        layer = keras.layers.TFSMLayer(path, call_endpoint=name)
        outputs = layer(images)
        reference = module.signatures[name](images=tf.constant(images))[name]
        endpoint = "final_avg_pool" if name == "default" else name
        assert list(outputs) == [name], list(outputs)
        output = np.asarray(outputs[name])
        np.testing.assert_array_equal(output, reference.numpy())
        atol = expected[f"atol_{endpoint}_{size}"]  # bound: endpoint_tolerances
        np.testing.assert_allclose(output, expected[f"{endpoint}_{size}"], atol=atol)
    print("loaded", len(signatures))
"""


def test_keras3_tfsm_layer_loads_every_endpoint(trained, tmp_path):
    expected = save_expected(trained, tmp_path / "expected.npz")
    output = run_python(
        TFSM_LAYER_CHECK,
        trained.full_module,
        expected,
        json.dumps(FULL_SIGNATURES),
        env=child_env(TF_USE_LEGACY_KERAS=None),
        check=True,
    ).stdout
    assert f"loaded {len(FULL_SIGNATURES)}" in output


def hub_classifier(path: str, trainable: bool) -> tuple[keras.Model, hub.KerasLayer]:
    """Module features (``final_avg_pool``) + a seeded linear layer, as a consumer writes it."""
    inputs = keras.Input((SIZE, SIZE, 3))
    layer = hub.KerasLayer(path, trainable=trainable, output_key="final_avg_pool")
    logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer=keras.initializers.GlorotUniform(0))
    return keras.Model(inputs, logits(layer(inputs))), layer


class EncoderFeatures(keras.layers.Layer):
    """In-memory counterpart of the module layer: encoder features and the same L2 term."""

    def __init__(self, model: SimCLRModel, weight_decay: float) -> None:
        super().__init__()
        self.encoder = model.encoder
        excluded = model.excluded_variables()
        self.add_loss(
            lambda: weight_decay_loss(self.encoder.trainable_variables, weight_decay, excluded)
        )

    def call(self, images: tf.Tensor, training=None) -> tf.Tensor:
        return self.encoder(images, training=training)["final_avg_pool"]


def in_memory_classifier(model: SimCLRModel) -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    features = EncoderFeatures(model, WEIGHT_DECAY)(inputs)
    logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer=keras.initializers.GlorotUniform(0))
    return keras.Model(inputs, logits(features))


def fine_tune(
    classifier: keras.Model, seed: int = 3, reverse_batches: bool = False
) -> tuple[float, list[float]]:
    """Fine-tune on a 64-example label subset: held-out accuracy (128 examples), epoch losses.
    ``reverse_batches`` reverses the examples within each batch: the same training, summed in
    another order."""
    train_images, train_labels = coloured_squares(64, seed=seed)
    if reverse_batches:
        order = np.arange(64).reshape(-1, 16)[:, ::-1].ravel()
        train_images, train_labels = train_images[order], train_labels[order]
    test_images, test_labels = coloured_squares(128, seed=seed + 100)
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = classifier.fit(
        train_images, train_labels, batch_size=16, epochs=6, shuffle=False, verbose=0
    )
    predictions = np.argmax(classifier.predict(test_images, verbose=0), axis=-1)
    return float(np.mean(predictions == test_labels)), history.history["loss"]


def test_keras_layer_fine_tunes_every_variable(trained, encoder_module):
    classifier, layer = hub_classifier(encoder_module, trainable=True)
    module = hub.load(encoder_module)
    assert len(layer.trainable_weights) == len(module.trainable_variables) > 0
    assert len(layer.non_trainable_weights) == len(module.variables) - len(
        module.trainable_variables
    )
    expected_l2 = weight_decay_loss(
        trained.model.encoder.trainable_variables,
        WEIGHT_DECAY,
        trained.model.excluded_variables(),
    )
    assert len(classifier.losses) == 1
    # Bound: both sides run the same l2_loss kernel on each variable's same values; only the
    # sum of the per-variable (positive) terms may go in another order: reduction_bound(n, 1)
    # relative for n variables.
    rtol = reduction_bound(len(layer.trainable_weights), 1.0)
    np.testing.assert_allclose(classifier.losses[0], expected_l2, rtol=rtol)
    assert float(expected_l2) > 0

    images, labels = coloured_squares(16, seed=5)
    with tf.GradientTape() as tape:
        logits = classifier(images, training=True)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        ) + tf.add_n(classifier.losses)
    gradients = tape.gradient(loss, layer.trainable_weights)
    missing = [v.name for v, g in zip(layer.trainable_weights, gradients, strict=True) if g is None]
    assert missing == []

    weights_before = [v.numpy() for v in layer.trainable_weights]
    statistics_before = [v.numpy() for v in layer.non_trainable_weights]
    accuracy, _ = fine_tune(classifier)
    unchanged = [
        v.name
        for v, before in zip(layer.trainable_weights, weights_before, strict=True)
        if np.array_equal(v.numpy(), before)
    ]
    assert unchanged == []
    frozen_statistics = [
        v.name
        for v, before in zip(layer.non_trainable_weights, statistics_before, strict=True)
        if np.array_equal(v.numpy(), before)
    ]
    assert frozen_statistics == []
    assert accuracy > 0.5, f"accuracy {accuracy} is not above chance (0.25)"


def test_frozen_keras_layer_changes_nothing(encoder_module):
    classifier, layer = hub_classifier(encoder_module, trainable=False)
    assert layer.trainable_weights == []
    assert float(classifier.losses[0]) == 0.0
    weights_before = [v.numpy() for v in layer.weights]
    fine_tune(classifier)
    for v, before in zip(layer.weights, weights_before, strict=True):
        np.testing.assert_array_equal(v.numpy(), before)


def test_hub_fine_tuning_matches_in_memory_fine_tuning(trained, encoder_module):
    keras.utils.set_random_seed(7)
    hub_accuracy, hub_losses = fine_tune(hub_classifier(encoder_module, trainable=True)[0])
    in_memory, reordered = [], []
    for reverse_batches, results in ((False, in_memory), (True, reordered)):
        model = SimCLRModel(CONFIG).build_for_size(SIZE)
        tf.train.Checkpoint(model=model).restore(trained.prefix).expect_partial()
        keras.utils.set_random_seed(7)
        results.extend(fine_tune(in_memory_classifier(model), reverse_batches=reverse_batches))
    (in_memory_accuracy, in_memory_losses), (_, reordered_losses) = in_memory, reordered
    assert in_memory_accuracy > 0.5 and hub_accuracy > 0.5, (hub_accuracy, in_memory_accuracy)
    # Bound: a prediction flips only on a near tie of two logits; 0.1 is 13 of the 128 held-out
    # examples, while a module that does not fine-tune stays near chance (0.25).
    assert abs(hub_accuracy - in_memory_accuracy) <= 0.1, (hub_accuracy, in_memory_accuracy)
    # Same start, data, order and optimizer: the two runs follow the same trajectory, up to the
    # round-off of the module's graph (other kernels, other fusions) amplified by 24 steps.
    # Bound: 10x the relative spread of the same fine-tuning on reversed batches, measured here.
    spread = relative_spread(reordered_losses, in_memory_losses)
    rtol = drift_tolerance(spread, 24, 1.0)
    np.testing.assert_allclose(hub_losses, in_memory_losses, rtol=rtol)


def test_restore_model_from_hub_under_strategy(trained, two_replica_strategy):
    config = dataclasses.replace(load_config_from_hub(trained.full_module), global_bn=True)
    with two_replica_strategy.scope():
        model = SimCLRModel(config).build_for_size(SIZE)
    restored = restore_model_from_hub(model, trained.full_module, require_all_parts=True)
    assert restored == ("encoder", "projection_head", "supervised_head")
    for size, images in trained.images.items():
        outputs = model(images, training=False)
        for name, value in trained.expected[size].items():  # bound: endpoint_tolerances
            np.testing.assert_allclose(outputs[name], value, atol=trained.atol[size][name])


def test_restore_from_encoder_module_keeps_new_heads(trained, encoder_module):
    model = SimCLRModel(dataclasses.replace(CONFIG, num_classes=7)).build_for_size(SIZE)
    head_before = model.supervised_head.dense.kernel.numpy()
    assert restore_model_from_hub(model, encoder_module) == ("encoder",)
    np.testing.assert_array_equal(model.supervised_head.dense.kernel.numpy(), head_before)
    np.testing.assert_allclose(
        model(trained.images[SIZE], training=False)["block_group4"],
        trained.expected[SIZE]["block_group4"],
        atol=trained.atol[SIZE]["block_group4"],  # bound: endpoint_tolerances
    )
    with pytest.raises(ValueError, match="has no projection_head, supervised_head"):
        restore_model_from_hub(model, encoder_module, require_all_parts=True)


def test_restore_rejects_other_architectures(trained, tmp_path):
    wider = SimCLRModel(dataclasses.replace(CONFIG, width_multiplier=0.5)).build_for_size(SIZE)
    with pytest.raises(ValueError, match=r"width_multiplier: 0\.25 vs 0\.5"):
        restore_model_from_hub(wider, trained.full_module)
    other_classes = SimCLRModel(dataclasses.replace(CONFIG, num_classes=7)).build_for_size(SIZE)
    with pytest.raises(ValueError, match="num_classes: 4 vs 7"):
        restore_model_from_hub(other_classes, trained.full_module)
    with pytest.raises(FileNotFoundError, match=r"no TF-Hub module at .*missing"):
        restore_model_from_hub(wider, str(tmp_path / "missing"))
    foreign = tf.Module()
    foreign.v = tf.Variable(1.0)
    tf.saved_model.save(foreign, str(tmp_path / "foreign"))
    with pytest.raises(ValueError, match="not a tf-simclr TF-Hub module"):
        load_config_from_hub(str(tmp_path / "foreign"))


@pytest.mark.parametrize(
    ("keep", "kept"), [(2, ["2", str(TRAIN_STEPS)]), (0, ["1", "2", str(TRAIN_STEPS)])]
)
def test_export_to_model_dir_keeps_newest_modules(trained, tmp_path, keep, kept):
    """A training run's export keeps the ``keep_hub_module_max`` newest step folders (0: all);
    other files stay too."""
    for name in ("1", "2", "notes"):
        (tmp_path / "hub" / name).mkdir(parents=True)
    path = export_to_model_dir(
        trained.model,
        str(tmp_path),
        TRAIN_STEPS,
        keep,
        include_projection_head=False,
        include_supervised_head=False,
    )
    assert path == str(tmp_path / "hub" / str(TRAIN_STEPS))
    assert sorted(os.listdir(tmp_path / "hub")) == sorted([*kept, "notes"])
    assert sorted(hub.load(path).signatures) == sorted([*BACKBONE, "default"])


def test_export_checkpoint_into_its_model_dir_removes_no_module(trained, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(trained.model_dir, model_dir)
    for name in ("1", "2"):
        (model_dir / "hub" / name).mkdir(parents=True)
    path = export_hub.export_checkpoint(
        str(model_dir), include_projection_head=False, include_supervised_head=False
    )
    assert path == str(model_dir / "hub" / str(TRAIN_STEPS))
    assert sorted(os.listdir(model_dir / "hub")) == ["1", "2", str(TRAIN_STEPS)]
    assert read_module_info(path).written_by == "export"


def test_export_binary_turns_checkpoint_prefix_into_module(trained, tmp_path):
    out = str(tmp_path / "module")
    output = run_python(
        "from tf_simclr.export_hub import run_main; run_main()",
        f"--checkpoint={trained.prefix}",
        f"--export_dir={out}",
        "--include_supervised_head=false",
        f"--weight_decay={WEIGHT_DECAY}",
        check=True,
    ).stdout
    assert out in output
    info = read_module_info(out)
    assert info.parts == ("encoder", "projection_head")
    assert info.step == TRAIN_STEPS
    outputs = hub.load(out)(trained.images[OTHER_SIZE], training=False)
    assert sorted(outputs) == sorted([*BACKBONE, *HEADS])
    for name, value in outputs.items():  # bound: endpoint_tolerances
        atol = trained.atol[OTHER_SIZE][name]
        np.testing.assert_allclose(value, trained.expected[OTHER_SIZE][name], atol=atol)


def test_export_rejects_missing_or_wrong_checkpoints(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here is neither"):
        export_hub.export_checkpoint(str(tmp_path / "nothing_here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        export_hub.export_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="--config"):
        export_hub.export_checkpoint(trained.prefix, config_path=str(tmp_path / "none.json"))


def write_config(path, config: ModelConfig) -> str:
    path.write_text(json.dumps({"model": dataclasses.asdict(config)}))
    return str(path)


def test_export_rejects_checkpoint_of_other_architecture(trained, tmp_path):
    wider = write_config(tmp_path / "wider.json", dataclasses.replace(CONFIG, width_multiplier=0.5))
    out = str(tmp_path / "module")
    with pytest.raises(
        ValueError,
        match=r"112 variables have other shapes \(.*encoder\.block_groups\.0\.blocks\.0\.conv1\."
        r"conv\.kernel checkpoint \(3, 3, 16, 16\) vs config \(3, 3, 32, 32\)",
    ):
        export_hub.export_checkpoint(trained.prefix, config_path=wider, export_dir=out)
    no_head = write_config(tmp_path / "no_head.json", dataclasses.replace(CONFIG, num_classes=0))
    with pytest.raises(ValueError, match=r"no place in the configured model \(supervised_head"):
        export_hub.export_checkpoint(trained.prefix, config_path=no_head, export_dir=out)


def test_module_refuses_images_outside_0_1(trained):
    # The contract is float32 in [0, 1]; 0-255 pixels used to run and return garbage (mean
    # output 451 instead of about 0.8). A little overshoot (e.g. from bicubic resizing) passes.
    module = hub.load(trained.full_module)
    images = trained.images[SIZE]
    overshoot = np.clip(images * 1.1 - 0.05, -0.05, 1.05).astype(np.float32)
    np.testing.assert_allclose(
        module(images, training=False)["final_avg_pool"],
        trained.expected[SIZE]["final_avg_pool"],
        atol=trained.atol[SIZE]["final_avg_pool"],  # bound: endpoint_tolerances
    )
    module(overshoot, training=False)
    module.signatures["default"](images=tf.constant(overshoot))
    wrong = {
        "0-255 pixels": images * 255.0,
        "standardised pixels": (images - 0.5) / 0.25,
        "NaN": np.full_like(images, np.nan),
    }
    calls = {
        "__call__": lambda x: module(x, training=False),
        "__call__ training": lambda x: module(x, training=True),
        "default": lambda x: module.signatures["default"](images=tf.constant(x)),
        "block_group2": lambda x: module.signatures["block_group2"](images=tf.constant(x)),
    }
    accepted = []
    for name, batch in wrong.items():
        for call_name, call in calls.items():
            try:
                call(batch.astype(np.float32))
                accepted.append(f"{name} by {call_name}")
            except tf.errors.InvalidArgumentError as error:
                assert "images must be float32 in [0, 1]" in str(error), str(error)
    assert not accepted
