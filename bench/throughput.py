"""Pretraining throughput: source images/second, FLOP/s against the matmul peak, peak memory.

Each configuration runs in its own process (clean peak RSS, its own logical-device layout):
the real pretraining step of tf-simclr (NT-Xent with cross-replica negatives, LARS, the on-line
linear probe, sync BN with several replicas) inside the multi-step ``tf.function`` of the loop,
fed either by the real input pipeline (``pipeline``) or by one pre-augmented batch repeated
(``model only``). "Images" are source images: both views of an image count once.

    .venv/bin/python bench/throughput.py --configs=r18_32 --batch=256
    .venv/bin/python bench/throughput.py            # every configuration of BENCHMARKS.md
    .venv/bin/python bench/throughput.py --configs=r50_32 --batch=128 --precisions=bfloat16 \
        --replica_counts=1 --modes=model_only --profile   # + TF profiler op breakdown
    .venv/bin/python bench/throughput.py --configs=r18_28 --width=0.25 --precisions=bfloat16 \
        --replica_counts=1 --modes=pipeline --memory_sizes=0,16384  # memory of negatives off/on

Model FLOPs are counted by TensorFlow's profiler on the traced forward pass of one view batch
(multiply-adds count as 2 FLOPs); a training step is counted as 3x the forward pass, the usual
estimate (forward + two backward matmuls per layer).

The peak is the best of several ``tf.matmul`` chains measured in the same run, each in its own
process: one before every configuration (in its precision) and one after the last, so that a
chain slowed by a passing load does not set it. Every result's ``fraction_of_peak`` divides by that
run-wide best, and the run starts by naming the machine (CPU model, AMX / AVX512-BF16).
"""

from __future__ import annotations

import argparse
import collections
import glob
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from machine import describe_machine, machine_line


def config_spec(name: str) -> dict:
    """``r<depth>_<image size>``, e.g. ``r50_224``; the CIFAR stem up to 64 px, ImageNet's above."""
    depth, size = name.removeprefix("r").split("_")
    return {"resnet_depth": int(depth), "image_size": int(size), "cifar_stem": int(size) <= 64}


def matmul_peak(dtype: str, size: int = 4096, repeats: int = 10) -> float:
    """Sustained FLOP/s of a chain of square ``tf.matmul`` in ``dtype`` on this machine.

    The matrix is orthogonal, so the chain neither overflows nor needs rescaling between
    products: only matmuls are timed.
    """
    import tensorflow as tf

    orthogonal, _ = tf.linalg.qr(tf.random.normal([size, size], seed=1))
    a = tf.cast(orthogonal, dtype)

    @tf.function
    def chain(x: tf.Tensor) -> tf.Tensor:
        for _ in range(repeats):
            x = tf.matmul(x, a)
        return x

    chain(a).numpy()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        chain(a).numpy()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def forward_flops(model, batch: int, image_size: int) -> float:
    """FLOPs of one forward pass of ``batch`` images (TensorFlow profiler, float_operation)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    forward = tf.function(lambda x: model(x, training=False)["proj_head_output"])
    concrete = forward.get_concrete_function(
        tf.TensorSpec([batch, image_size, image_size, 3], tf.float32)
    )
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return float(profile.total_float_ops)


def run_one(args: argparse.Namespace) -> dict:
    """Measure one configuration in this process (called in a child process)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    from tf_simclr.training.strategy import configure_logical_cpus

    configure_logical_cpus(args.replicas)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    from tf_simclr.config import AugmentConfig, LossConfig, MemoryConfig, ModelConfig, OptimConfig
    from tf_simclr.data import build_distributed_dataset, load_source
    from tf_simclr.models import SimCLRModel
    from tf_simclr.objectives import WarmUpAndCosineDecay, build_optimizer
    from tf_simclr.training import loop, phases
    from tf_simclr.training.memory import NegativeMemory

    spec = config_spec(args.config)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[args.precision]
    if args.replicas > 1:
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
    else:
        strategy = tf.distribute.get_strategy()
    config = ModelConfig(
        resnet_depth=spec["resnet_depth"],
        width_multiplier=args.width,
        cifar_stem=spec["cifar_stem"],
        global_bn=args.replicas > 1,
        num_classes=10,
        supervised_head_stop_gradient=True,
        dtype_policy=policy,
    )
    image_size = spec["image_size"]
    with strategy.scope():
        model = SimCLRModel(config).build_for_size(image_size)
        schedule = WarmUpAndCosineDecay(0.3, 10, 10_000)
        optimizer = build_optimizer(OptimConfig(), schedule, model.excluded_variables())
        optimizer.build(model.trainable_variables)
        memory = None
        if args.memory_size:
            memory = NegativeMemory(
                model,
                MemoryConfig(memory_size=args.memory_size),
                global_batch_size=args.batch,
                image_size=image_size,
            )
    compute = phases.pretrain_compute(model, strategy, LossConfig(), OptimConfig(), True, memory)
    functions = loop.StepFunctions(
        compute=compute,
        variables=lambda: model.trainable_variables,
        learning_rate=schedule,
    )
    if memory is not None:
        functions.before_step = lambda batch: memory.before_step(strategy, model, batch)
        functions.after_step = lambda batch: memory.after_step(strategy, batch)
    run_steps = loop.TrainFunction(strategy, optimizer, functions)
    count = max(args.batch * 4, 1024)
    source, info = load_source(f"synthetic:size={image_size},count={count},classes=10")
    augment = AugmentConfig(image_size=image_size, color_jitter_strength=0.5)
    dataset = build_distributed_dataset(
        strategy,
        source,
        info.num_examples,
        phase="pretrain",
        global_batch_size=args.batch,
        augment=augment,
        training=True,
    )
    # "model only": one pre-augmented batch, captured once and repeated inside the step loop.
    iterator = iter(dataset) if args.pipeline else _repeat(next(iter(dataset)))
    run_steps(iterator, args.warmup)
    start = time.perf_counter()
    losses = run_steps(iterator, args.steps)
    seconds = time.perf_counter() - start
    images_per_second = args.steps * args.batch / seconds
    per_view = forward_flops(model, 1, image_size)
    step_flops = 3 * per_view * 2 * images_per_second  # two views per source image
    result = {
        "config": args.config,
        "width": args.width,
        "precision": args.precision,
        "replicas": args.replicas,
        "batch": args.batch,
        "memory_size": args.memory_size,
        "inter_op_threads": args.inter_op_threads,
        "pipeline": args.pipeline,
        "images_per_second": images_per_second,
        "model_tflops_per_second": step_flops / 1e12,
        "forward_gflops_per_view": per_view / 1e9,
        "contrast_loss": losses["contrast_loss"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if args.profile:
        logdir = tempfile.mkdtemp(prefix="tf_simclr_profile_")
        tf.profiler.experimental.start(logdir)
        run_steps(iterator, 2)
        tf.profiler.experimental.stop()
        result["op_breakdown"] = op_breakdown(logdir)
    return result


# Ops whose events enclose other ops' events (the multi-step loop, function calls).
CONTAINER_OPS = {"While", "StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf"}


def op_breakdown(logdir: str, top: int = 15) -> list[list]:
    """Share of the summed self time of TensorFlow ops per op type, from the profiler's XPlane
    trace of the host. Op events are named ``op_name:OpType``; runtime events (``Executor...``,
    ``EagerExecute``) are ignored, and an op event nested in another on the same thread is
    subtracted from the enclosing one."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    op_event = re.compile(r"^[^:\s]+:(\w+)$")
    totals: collections.Counter = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                stack: list[list] = []  # [end, op type, self time] of the enclosing op events
                for event in sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps)):
                    match = op_event.match(plane.event_metadata[event.metadata_id].name)
                    if match is None:
                        continue
                    while stack and stack[-1][0] <= event.offset_ps:
                        _, op_type, self_time = stack.pop()
                        totals[op_type] += self_time
                    if stack:
                        stack[-1][2] -= event.duration_ps
                    end = event.offset_ps + event.duration_ps
                    stack.append([end, match.group(1), event.duration_ps])
                for _, op_type, self_time in stack:
                    totals[op_type] += self_time
    for op_type in CONTAINER_OPS:
        totals.pop(op_type, None)
    total = sum(totals.values()) or 1
    return [[op_type, round(time / total, 4)] for op_type, time in totals.most_common(top)]


def _run_child(child: dict) -> dict:
    """Run one measurement in a fresh process and return its result."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(child)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _measure_peak(precision: str, peaks: dict[str, float]) -> None:
    """Measure one matmul chain of ``precision`` in its own process; keep the best in
    ``peaks``."""
    measured = _run_child({"peak_only": True, "precision": precision})["matmul_peak"]
    print(f"matmul chain {precision}: {measured / 1e12:.3f} TFLOP/s", flush=True)
    peaks[precision] = max(peaks.get(precision, 0.0), measured)


def _repeat(batch):
    while True:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="r18_32,r50_32,r50_224")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--replica_counts", default="1,2")
    parser.add_argument("--batch", type=int, default=0, help="0: 256 up to 64 px, else 16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default="pipeline,model_only")
    parser.add_argument("--output", default="")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="0: TF's default")
    parser.add_argument("--profile", action="store_true", help="Add a TF profiler op breakdown.")
    parser.add_argument("--memory_sizes", default="0", help="Memory of negatives; 0 = off.")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = argparse.Namespace(**json.loads(args.child))
        if child.peak_only:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            result = {"precision": child.precision, "matmul_peak": matmul_peak(child.precision)}
        else:
            result = run_one(child)
        print("RESULT " + json.dumps(result), flush=True)
        return
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    results = []
    peaks: dict[str, float] = {}
    for config in args.configs.split(","):
        batch = args.batch or (16 if config_spec(config)["image_size"] > 64 else 256)
        for precision in args.precisions.split(","):
            for replicas in (int(r) for r in args.replica_counts.split(",")):
                for mode, memory_size in itertools.product(
                    args.modes.split(","), (int(m) for m in args.memory_sizes.split(","))
                ):
                    child = dict(
                        memory_size=memory_size,
                        config=config,
                        precision=precision,
                        replicas=replicas,
                        batch=batch,
                        width=args.width,
                        steps=args.steps,
                        warmup=args.warmup,
                        pipeline=mode == "pipeline",
                        profile=args.profile,
                        inter_op_threads=args.inter_op_threads,
                        peak_only=False,
                    )
                    _measure_peak(precision, peaks)
                    result = {**_run_child(child), "machine": machine}
                    results.append(result)
                    print(json.dumps(result), flush=True)
    for precision in {result["precision"] for result in results}:
        _measure_peak(precision, peaks)
    for result in results:
        peak = peaks[result["precision"]]
        result["matmul_peak_tflops"] = peak / 1e12
        result["fraction_of_peak"] = result["model_tflops_per_second"] * 1e12 / peak
        print(
            f"{result['config']} w{result['width']} {result['precision']} "
            f"x{result['replicas']} batch {result['batch']} "
            f"{'pipeline' if result['pipeline'] else 'model only'}: "
            f"{result['images_per_second']:.1f} images/s, "
            f"{result['model_tflops_per_second']:.3f} TFLOP/s, "
            f"{result['fraction_of_peak']:.2f} of the best {result['precision']} matmul chain "
            f"({peak / 1e12:.3f} TFLOP/s)",
            flush=True,
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
