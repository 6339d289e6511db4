"""Tests of the model zoo against the SimCLRv2 paper (Table 1) and the design's contracts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tolerances import matmul_bound

from tf_simclr import ModelConfig, SimCLRModel
from tf_simclr.models.resnet import SelectiveKernel, Shortcut

SMALL = ModelConfig(resnet_depth=18, width_multiplier=0.25, cifar_stem=True, num_classes=5)

# SimCLRv2 Table 1: (depth, width, selective kernels) -> encoder parameters, millions, rounded.
TABLE_1 = [
    (50, 1, False, 24),
    (50, 1, True, 35),
    (50, 2, False, 94),
    (50, 2, True, 140),
    (101, 1, False, 43),
    (101, 1, True, 65),
    (101, 2, False, 170),
    (101, 2, True, 257),
    (152, 1, False, 58),
    (152, 1, True, 89),
    (152, 2, False, 233),
    (152, 2, True, 354),
    (152, 3, True, 795),
]


def build(config: ModelConfig, size: int = 32) -> SimCLRModel:
    return SimCLRModel(config).build_for_size(size)


@pytest.mark.parametrize(("depth", "width", "sk", "millions"), TABLE_1)
def test_encoder_parameter_count_matches_table_1(depth, width, sk, millions):
    config = ModelConfig(resnet_depth=depth, width_multiplier=width, sk_ratio=0.0625 if sk else 0)
    # Built in a graph: the same variables, but none initialised (795M random numbers took 24 s).
    with tf.Graph().as_default():
        model = SimCLRModel(config)
        model.encoder(tf.zeros([1, 32, 32, 3]), training=False)
        assert round(model.encoder.count_params() / 1e6) == millions


def test_resnet50_endpoint_shapes_at_224():
    model = SimCLRModel(ModelConfig(resnet_depth=50, num_classes=10))
    out = model(tf.zeros([2, 224, 224, 3]), training=False)
    expected = {
        "initial_conv": (2, 112, 112, 64),
        "initial_max_pool": (2, 56, 56, 64),
        "block_group1": (2, 56, 56, 256),
        "block_group2": (2, 28, 28, 512),
        "block_group3": (2, 14, 14, 1024),
        "block_group4": (2, 7, 7, 2048),
        "final_avg_pool": (2, 2048),
        "proj_head_input": (2, 2048),
        "proj_head_1": (2, 2048),
        "proj_head_2": (2, 2048),
        "proj_head_3": (2, 128),
        "proj_head_output": (2, 128),
        "logits_sup": (2, 10),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(v.dtype == tf.float32 for v in out.values())


@pytest.mark.parametrize(("depth", "width"), [(50, 2), (18, 0.5), (34, 0.25)])
def test_channels_scale_with_width(depth, width):
    model = build(ModelConfig(resnet_depth=depth, width_multiplier=width), size=64)
    out = model(tf.zeros([1, 64, 64, 3]), training=False)
    expansion = 4 if depth >= 50 else 1
    assert out["initial_conv"].shape[-1] == int(64 * width)
    for i, base in enumerate((64, 128, 256, 512)):
        assert out[f"block_group{i + 1}"].shape[-1] == int(base * width) * expansion
    assert out["final_avg_pool"].shape[-1] == int(512 * width) * expansion


def test_cifar_stem_keeps_resolution():
    model = build(SMALL)
    out = model(tf.zeros([1, 32, 32, 3]), training=False)
    assert out["initial_conv"].shape[1:3] == (32, 32)
    assert out["initial_max_pool"].shape[1:3] == (32, 32)
    assert out["block_group1"].shape[1:3] == (32, 32)
    assert out["block_group4"].shape[1:3] == (4, 4)


def test_any_input_size_and_odd_sides():
    model = build(ModelConfig(resnet_depth=18, width_multiplier=0.25))
    out = model(tf.zeros([1, 97, 61, 3]), training=False)
    assert out["initial_conv"].shape[1:3] == (49, 31)
    assert out["final_avg_pool"].shape == (1, 128)


def test_sk_uses_resnet_d_stem_and_avg_pool_shortcut():
    config = ModelConfig(resnet_depth=50, width_multiplier=0.25, sk_ratio=0.0625)
    model = build(config)
    assert len(model.encoder.stem.convs) == 3
    assert [c.conv.kernel.shape[:2] for c in model.encoder.stem.convs] == [(3, 3)] * 3
    group2 = model.encoder.block_groups[1].blocks[0]
    assert isinstance(group2.shortcut.pool, keras.layers.AveragePooling2D)
    assert group2.shortcut.proj.conv.strides == (1, 1)
    assert isinstance(group2.conv2, SelectiveKernel)
    plain = build(dataclasses.replace(config, sk_ratio=0.0))
    assert len(plain.encoder.stem.convs) == 1
    assert plain.encoder.block_groups[1].blocks[0].shortcut.pool is None


def _average_pools(x: np.ndarray, strides: int, count_padding: bool) -> np.ndarray:
    """2x2 average pools of ``x`` (NHWC) with the padding at the bottom and right either
    counted as zeros (the reference's strided ResNet-D pool) or left out ("same")."""
    _, height, width, _ = x.shape
    rows, cols = -(-height // strides), -(-width // strides)
    out = np.zeros((x.shape[0], rows, cols, x.shape[3]))
    for i in range(rows):
        for j in range(cols):
            window = x[:, i * strides : i * strides + 2, j * strides : j * strides + 2]
            size = 4 if count_padding else window.shape[1] * window.shape[2]
            out[:, i, j] = window.sum(axis=(1, 2)) / size
    return out


@pytest.mark.parametrize("reference_resnet_d", [False, True])
def test_resnet_d_shortcut_pooling(reference_resnet_d):
    """tf-simclr's ResNet-D pools strided shortcuts only, leaving "same" padding out of the
    average; ``reference_resnet_d`` pools as google-research/simclr: stride-1 shortcuts too, and
    strided ones over zero padding that counts (different values at odd sides)."""
    config = ModelConfig(sk_ratio=0.0625, reference_resnet_d=reference_resnet_d)
    x = tf.random.stateless_uniform([2, 5, 7, 3], seed=[2, 3])
    for strides in (1, 2):
        shortcut = Shortcut(config, 6, strides)
        out = shortcut(x, training=False)
        if strides == 1 and not reference_resnet_d:
            assert shortcut.pool is None
            pooled = x.numpy()
        else:
            pooled = _average_pools(x.numpy(), strides, reference_resnet_d and strides > 1)
        expected = shortcut.proj(tf.constant(pooled, tf.float32), training=False)
        # Bound: the same 1x1 convolution over 3 channels and inference batch norm on a float32
        # vs float64 average of at most 4 values: a few eps (rel 1e-5, abs 1e-6 near 0).
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert out.shape[1:3] == (-(-5 // strides), -(-7 // strides))


def test_initial_conv_before_bn_is_the_stem_convolution():
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[4, 4])
    for before_bn in (False, True):
        model = build(dataclasses.replace(SMALL, initial_conv_before_bn=before_bn))
        stem = model.encoder.stem.convs[-1]
        stem.bn.moving_mean.assign(tf.fill(stem.bn.moving_mean.shape, 0.3))
        out = model(images, training=False)
        convolution = stem.conv(images)
        expected = convolution if before_bn else tf.nn.relu(stem.bn(convolution, training=False))
        # Bound: the same convolution op on the same input (bit-identical in practice), then
        # inference batch norm and relu: a few eps (rel 1e-5, abs 1e-6 near 0).
        np.testing.assert_allclose(out["initial_conv"], expected, rtol=1e-5, atol=1e-6)
        assert (np.min(out["initial_conv"]) < 0) == before_bn


def test_truncated_head_is_hidden_layers_only():
    width = SMALL.encoder_output_dim
    config = dataclasses.replace(
        SMALL, num_proj_layers=2, truncated_proj_head=True, proj_out_dim=width
    )
    model = build(config)
    out = model(tf.random.stateless_uniform([4, 32, 32, 3], seed=[6, 1]), training=True)
    assert [out[f"proj_head_{i}"].shape[-1] for i in (1, 2)] == [width, width]
    assert "proj_head_3" not in out
    assert all(layer.bn.center for layer in model.projection_head.layers_list)
    assert np.min(out["proj_head_output"]) >= 0
    np.testing.assert_array_equal(out["proj_head_output"], out["proj_head_2"])
    for kwargs in ({"proj_out_dim": 16}, {"proj_head_mode": "linear"}):
        with pytest.raises(ValueError, match="truncated_proj_head"):
            dataclasses.replace(config, **kwargs)


def test_selective_kernel_is_a_softmax_mixture_of_its_two_paths():
    config = ModelConfig(resnet_depth=50, sk_ratio=0.0625)
    layer = SelectiveKernel(config, filters=16, strides=1)
    x = tf.random.stateless_normal([2, 8, 8, 5], seed=[1, 2])
    out = layer(x, training=False).numpy()
    paths = layer.paths(x, training=False).numpy()
    a, b = paths[..., :16], paths[..., 16:]
    descriptor = (a + b).mean(axis=(1, 2), keepdims=True)
    squeezed = layer.squeeze(tf.constant(descriptor), training=False)
    mixing = layer.mixing(squeezed).numpy()
    squeezed_dim = layer.squeeze.conv.filters
    assert squeezed_dim == max(int(16 * 0.0625), 32)
    logits_a, logits_b = mixing[..., :16], mixing[..., 16:]
    weight_a = 1.0 / (1.0 + np.exp(logits_b - logits_a))
    # Bound: the model's float32 sigmoid and mixture of |a|, |b| ~ 1 vs NumPy's float32
    # exp from the same mixing logits: a few eps (rel 1e-5, abs 1e-5 where a and b cancel).
    np.testing.assert_allclose(out, weight_a * a + (1 - weight_a) * b, rtol=1e-5, atol=1e-5)


def test_last_bn_of_every_block_starts_at_zero():
    for config in (SMALL, ModelConfig(resnet_depth=50, width_multiplier=0.25)):
        model = build(config)
        for group in model.encoder.block_groups:
            for block in group.blocks:
                last = block.conv3 if config.uses_bottleneck else block.conv2
                assert np.all(last.bn.gamma.numpy() == 0)
                assert np.all(block.conv1.bn.gamma.numpy() == 1)


def test_batch_norm_settings_are_configurable():
    model = build(dataclasses.replace(SMALL, batch_norm_decay=0.97, batch_norm_epsilon=1e-3))
    bns = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and all(bn.momentum == 0.97 and bn.epsilon == 1e-3 for bn in bns)


@pytest.mark.parametrize(
    ("mode", "layers", "dims"),
    [("nonlinear", 3, [128, 128, 128, 16]), ("linear", 1, [128, 16]), ("none", 0, [128])],
)
def test_projection_head_modes(mode, layers, dims):
    config = dataclasses.replace(SMALL, proj_head_mode=mode, proj_out_dim=16)
    model = build(config)
    out = model(tf.random.stateless_uniform([4, 32, 32, 3], seed=[0, 1]), training=True)
    assert [out["proj_head_input"].shape[-1]] + [
        out[f"proj_head_{i + 1}"].shape[-1] for i in range(layers)
    ] == dims
    assert f"proj_head_{layers + 1}" not in out
    last = "proj_head_input" if layers == 0 else f"proj_head_{layers}"
    np.testing.assert_array_equal(out["proj_head_output"], out[last])
    np.testing.assert_array_equal(out["proj_head_input"], out["final_avg_pool"])
    assert len(model.projection_head.layers_list) == layers
    for i, layer in enumerate(model.projection_head.layers_list):
        assert isinstance(layer.bn, keras.layers.BatchNormalization)
        assert layer.dense.bias is None
        assert layer.bn.center == (i < layers - 1)


def test_nonlinear_head_layers_have_relu_except_the_last():
    model = build(SMALL)
    out = model(tf.random.stateless_uniform([8, 32, 32, 3], seed=[3, 1]), training=True)
    assert np.min(out["proj_head_1"]) >= 0 and np.min(out["proj_head_2"]) >= 0
    assert np.min(out["proj_head_3"]) < 0


@pytest.mark.parametrize(
    ("selector", "source"),
    [(0, "proj_head_input"), (1, "proj_head_1"), (-1, "proj_head_output"), (2, "proj_head_2")],
)
def test_ft_proj_selector_picks_the_head_layer(selector, source):
    model = build(dataclasses.replace(SMALL, ft_proj_selector=selector))
    out = model(tf.random.stateless_uniform([3, 32, 32, 3], seed=[5, 5]), training=False)
    dense = model.supervised_head.dense
    features, kernel, bias = out[source].numpy(), dense.kernel.numpy(), dense.bias.numpy()
    # Bound: a float32 dense layer, whatever its kernel, is within matmul_bound of the exact
    # (float64) value.
    error = np.abs(out["logits_sup"].numpy() - (features.astype(np.float64) @ kernel + bias))
    assert np.all(error <= matmul_bound(features, kernel, bias)), error.max()


def test_squeeze_excitation_adds_gating_layers():
    base = build(SMALL)
    with_se = build(dataclasses.replace(SMALL, se_ratio=0.25))
    block = with_se.encoder.block_groups[0].blocks[0]
    assert block.se is not None and block.se.reduce.filters == 4
    assert with_se.count_params() > base.count_params()


def test_supervised_head_zero_init_and_stop_gradient():
    config = dataclasses.replace(
        SMALL, zero_init_logits_layer=True, supervised_head_stop_gradient=True
    )
    model = build(config)
    assert np.all(model.supervised_head.dense.kernel.numpy() == 0)
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 1])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True)["logits_sup"] ** 2 + 1.0)
        loss += tf.reduce_sum(model.supervised_head.dense.kernel)
    grads = tape.gradient(loss, model.encoder.trainable_variables)
    assert all(g is None for g in grads)


def test_probe_batch_norm_standardises_the_supervised_head_input():
    config = dataclasses.replace(SMALL, supervised_head_batch_norm=True)
    model = build(config)
    head = model.supervised_head
    assert {v.name.split("/")[-1].split(":")[0] for v in head.bn.variables} == {
        "moving_mean",
        "moving_variance",
    }  # no scale, no offset: nothing for the optimizer but the linear layer
    images = tf.random.stateless_uniform([6, 32, 32, 3], seed=[2, 3])
    outputs = model(images, training=True)
    features = outputs["final_avg_pool"].numpy().astype(np.float64)
    standardised = (features - features.mean(axis=0)) / np.sqrt(
        features.var(axis=0) + config.batch_norm_epsilon
    )
    expected = standardised @ head.dense.kernel.numpy() + head.dense.bias.numpy()
    # Bound: float32 batch norm over only 6 examples (a variance of near-equal features loses
    # up to ~1e-5 relative to cancellation), then a dense layer: rel 1e-4, abs 1e-5.
    np.testing.assert_allclose(outputs["logits_sup"].numpy(), expected, rtol=1e-4, atol=1e-5)
    # Inference reads the moving statistics, which training moved towards the batch's.
    moved = head.bn.moving_mean.numpy()
    # Bound: the float32 mean of 6 values and one update, against float64: rel < 1e-6 (1e-4).
    np.testing.assert_allclose(moved, (1 - config.batch_norm_decay) * features.mean(0), rtol=1e-4)


def test_fine_tune_after_block_freezes_the_early_layers():
    model = build(dataclasses.replace(SMALL, fine_tune_after_block=2))
    trainable = {id(v) for v in model.trainable_variables}
    encoder = model.encoder
    frozen = [encoder.stem, *encoder.block_groups[:2]]
    assert all(id(v) not in trainable for layer in frozen for v in layer.variables)
    assert all(id(v) in trainable for v in encoder.block_groups[2].trainable_weights)
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[2, 2])
    with tf.GradientTape() as tape:
        out = model(images, training=True)
        loss = tf.reduce_sum(out["proj_head_output"]) + tf.reduce_sum(out["logits_sup"])
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    linear_eval = build(dataclasses.replace(SMALL, fine_tune_after_block=4))
    assert {id(v) for v in linear_eval.trainable_variables} == {
        id(v)
        for v in linear_eval.projection_head.trainable_variables
        + linear_eval.supervised_head.trainable_variables
    }


def test_excluded_variables_are_bn_bias_and_supervised_head():
    model = build(dataclasses.replace(SMALL, se_ratio=0.25))
    excluded = {id(v) for v in model.excluded_variables()}
    for variable in model.trainable_variables:
        name = variable.name
        expected = (
            "gamma" in name or "beta" in name or "bias" in name or "/head_supervised/" in name
        )
        assert (id(variable) in excluded) == expected, name
    assert any("bias" in v.name and "se" in v.name.lower() for v in model.excluded_variables())


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        dataclasses.replace(SMALL, resnet_depth=50, sk_ratio=0.0625, se_ratio=0.25),
        dataclasses.replace(SMALL, cifar_stem=False, proj_head_mode="linear"),
        dataclasses.replace(SMALL, proj_head_mode="none", num_classes=0),
        dataclasses.replace(SMALL, resnet_depth=34, global_bn=True, ft_proj_selector=1),
    ],
    ids=["r18", "r50-sk-se", "imagenet-stem-linear", "no-head", "r34-syncbn"],
)
def test_checkpoint_round_trip_restores_every_variable(config, tmp_path):
    model = build(config)
    model(tf.random.stateless_uniform([4, 32, 32, 3], seed=[9, 9]), training=True)  # BN stats
    for variable in model.variables:
        variable.assign(tf.random.stateless_normal(variable.shape, seed=[len(variable.name), 1]))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = build(config)
    status = tf.train.Checkpoint(model=fresh).restore(path)
    status.assert_existing_objects_matched().assert_consumed()
    # Layer names carry per-process counters, so variables are paired by position.
    assert len(fresh.variables) == len(model.variables)
    for saved, restored in zip(model.variables, fresh.variables, strict=True):
        assert saved.shape == restored.shape, saved.name
        np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.name)


def test_sync_bn_across_two_replicas_equals_plain_bn_on_the_whole_batch(two_replica_strategy):
    images = tf.random.stateless_uniform([8, 32, 32, 3], seed=[4, 2])
    plain = build(dataclasses.replace(SMALL, global_bn=False))
    expected = plain(images, training=True)
    with two_replica_strategy.scope():
        synced = build(dataclasses.replace(SMALL, global_bn=True))
    for variable, source in zip(synced.variables, plain.variables, strict=True):
        variable.assign(source.read_value())  # same starting weights and moving statistics

    def forward(ctx: tf.distribute.InputContext):
        return tf.data.Dataset.from_tensor_slices(images).batch(4)

    batch = next(iter(two_replica_strategy.distribute_datasets_from_function(forward)))

    @tf.function
    def step(batch):
        return two_replica_strategy.run(lambda x: synced(x, training=True), args=(batch,))

    per_replica = step(batch)
    for name in ("block_group4", "proj_head_output", "logits_sup"):
        parts = two_replica_strategy.experimental_local_results(per_replica[name])
        got = np.concatenate([p.numpy() for p in parts])
        # Bound: the same network, but batch statistics summed over 2 replicas (all-reduce)
        # instead of 8 images at once; sum(x**2)/n - mean**2 cancels for features near their
        # mean, so a relative 1e-6 of the moments becomes ~1e-5 of normalised outputs; 1e-4.
        np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_mixed_bfloat16_keeps_float32_variables_and_outputs():
    model = build(dataclasses.replace(SMALL, dtype_policy="mixed_bfloat16"))
    out = model(tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 7]), training=True)
    assert all(v.dtype == tf.float32 for v in model.variables)
    assert all(v.dtype == tf.float32 for v in out.values())
    conv = model.encoder.stem.convs[0].conv
    assert conv.compute_dtype == "bfloat16"
    assert model.projection_head.layers_list[0].dense.compute_dtype == "float32"
