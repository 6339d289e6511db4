"""Label-efficiency study on Fashion-MNIST: SimCLRv2's claims (Chen et al. 2020, sections 1, 2
and 4; Figure 1, Tables 2-3) checked at the scale of a 2-core CPU.

All rows use the recipes' network (ResNet-18 at width 0.25, CIFAR stem, 28 px) and the 10,000
test images:

- **reference rows** (in process, same protocols as the encoder's): raw pixels (784 values) and
  a randomly initialised encoder, scored by the weighted kNN monitor (bank: 10,000 training
  images, k = 200, t = 0.1) and by a converged linear probe (standardised features, Adam, see
  ``tf_simclr/training/linear_probe.py``) on 1%, 10% and 100% of the labels;
- **the SimCLRv2 encoder** under the same two protocols: the released module
  (``pretrained/fashion_mnist/hub``) when it exists, otherwise a pretraining run of the study;
- **converged supervised baselines**: on seed 0 a budget sweep (``budget_multipliers`` x a base
  schedule, doubled again while the longest budget wins by at least ``min_budget_gain``) per
  label fraction; the best budget (by test top-1) then runs for the other seeds;
- **fine-tuning** of the whole network from ``proj_head_1`` on 1% and 10% (SimCLRv2 section 2)
  under the same budget rule as the baselines (both sides chosen by test top-1 on seed 0, so
  neither is favoured), seeds paired with the supervised runs (same seed, same label subset);
- **distillation with the labels mixed in** (eq. 4, ``distill_alpha``) on the 60,000 training
  images from the seed-0 fine-tune at its sweep's best budget (the best teacher the study has):
  a same-size student initialised from the encoder and a smaller one (width 0.125) from
  scratch, each for every seed (the student's seed and label subset; the teacher stays).

The study spans sessions: every finished run writes ``<record_dir>/<name>.json`` and the
teachers' hub modules go to ``<record_dir>/modules/<teacher run>/``; both are meant to be
committed, and a recorded run is skipped unless its inputs changed: its expanded flags (the
flagfiles' contents, not their names), the encoder, and for a student its teacher's inputs.
Scratch model_dirs go to ``run_dir``; an interrupted run resumes from its own checkpoints. At
the end: ``results.json``, a Markdown table with every target marked met or missed, and a PNG
plot.

    .venv/bin/python bench/label_efficiency.py                     # the whole study, resumable
    .venv/bin/python bench/label_efficiency.py --seeds=0 --extra_flags="--train_steps=2"
    .venv/bin/python bench/label_efficiency.py --only="self_distill_10pct_*"  # some pending runs
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import time

import numpy as np
from child_run import run_tf_simclr

from tf_simclr.flagfiles import expand_flagfiles

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED_ENCODER = os.path.join(REPO_ROOT, "pretrained", "fashion_mnist", "hub")
RECORD_DIR = os.path.join(REPO_ROOT, "bench", "results", "label_efficiency")
FRACTIONS = (0.01, 0.1, 1.0)
SEMI_SUPERVISED = (0.01, 0.1)
# Base schedules in epochs over the labeled subset; the budget sweeps multiply them.
SUPERVISED_BASE_EPOCHS = {0.01: 100, 0.1: 25, 1.0: 25}
FINETUNE_EPOCHS = {0.01: 60, 0.1: 20}
SWEPT_METHODS = {"supervised": SUPERVISED_BASE_EPOCHS, "finetune": FINETUNE_EPOCHS}
STUDENT_WIDTH = 0.125
PROBE_ENCODERS = ("pixels", "random", "simclr")
METHODS = {
    "supervised": "supervised only (best budget of the sweep)",
    "finetune": "SimCLRv2 fine-tuned (proj_head_1, best budget of the sweep)",
    "self_distill": "SimCLRv2 self-distilled (same size, labels mixed in)",
    "distill_small": f"SimCLRv2 distilled into width {STUDENT_WIDTH} (labels mixed in)",
}
PROBE_LABELS = {
    "pixels": "raw pixels",
    "random": "randomly initialised encoder",
    "simclr": "SimCLRv2 encoder",
}


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """What to run. ``encoder``: a hub module or model_dir to evaluate and fine-tune from
    ("" pretrains one in the study for ``pretrain_epochs``); ``only``: run just the pending runs
    whose names match (the others stay pending)."""

    run_dir: str
    record_dir: str = RECORD_DIR
    seeds: tuple[int, ...] = (0, 1, 2)
    encoder: str = ""
    pretrain_epochs: float = 60
    budget_multipliers: tuple[float, ...] = (1, 2, 4)
    max_budget_multiplier: float = 32
    min_budget_gain: float = 0.001
    distill_epochs: float = 10
    distill_alpha: float = 0.5
    extra_flags: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def selects(self, name: str) -> bool:
        """Whether a pending run is run now: every run, or those matching a pattern of ``only``
        (shell-style, e.g. ``self_distill_10pct_*``)."""
        return not self.only or any(fnmatch.fnmatchcase(name, p) for p in self.only)

    @property
    def encoder_source(self) -> str:
        return self.encoder or os.path.join(self.run_dir, "pretrain")


@dataclasses.dataclass(frozen=True)
class Run:
    """One step of the study: a ``tf-simclr`` process, or (``method == "probe"``) an in-process
    evaluation of fixed features."""

    name: str
    method: str
    fraction: float
    seed: int
    flags: tuple[str, ...]
    multiplier: float = 0.0
    teacher: str = ""


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def sweep_run_name(method: str, fraction: float, multiplier: float, seed: int) -> str:
    return f"{method}_{percent(fraction)}_x{multiplier:g}_seed{seed}"


def budget_run(
    settings: StudySettings, method: str, fraction: float, seed: int, multiplier: float, name: str
) -> Run:
    """A supervised or fine-tuning run of ``multiplier`` x its method's base schedule."""
    epochs = SWEPT_METHODS[method][fraction] * multiplier
    if method == "supervised":
        flags = (
            f"--flagfile=flags/fashion_mnist/supervised_{percent(fraction)}.flags",
            f"--seed={seed}",
            f"--train_epochs={epochs:g}",
            f"--checkpoint_epochs={epochs / 4:g}",
        )
    else:
        flags = (
            f"--flagfile=flags/fashion_mnist/finetune_{percent(fraction)}.flags",
            f"--checkpoint={settings.encoder_source}",
            f"--seed={seed}",
            f"--train_epochs={epochs:g}",
            f"--checkpoint_epochs={epochs:g}",
        )
    return Run(name, method, fraction, seed, flags, multiplier)


def fraction_sweep(
    settings: StudySettings, records: dict[str, dict], fraction: float, method: str = "supervised"
) -> list[Run]:
    """The budget sweep of ``method`` on one fraction and the first seed: ``budget_multipliers``,
    extended by doubling while the largest budget beats every shorter one by at least
    ``min_budget_gain`` (a run still improving at its largest budget is not converged; one that
    gains less than a tenth of a point, ten test images, has reached its plateau), up to
    ``max_budget_multiplier``."""
    seed = settings.seeds[0]
    multipliers = list(settings.budget_multipliers)
    while True:
        names = {m: sweep_run_name(method, fraction, m, seed) for m in multipliers}
        runs = [budget_run(settings, method, fraction, seed, m, names[m]) for m in multipliers]
        recorded = [records.get(run.name) for run in runs]
        longest = multipliers[-1]
        if None in recorded or longest * 2 > settings.max_budget_multiplier:
            return runs
        gain = recorded[-1]["top_1"] - max(record["top_1"] for record in recorded[:-1])
        if gain <= 0 or round(gain, 6) < settings.min_budget_gain:
            return runs
        multipliers.append(longest * 2)


def best_multiplier(
    records: dict[str, dict], settings: StudySettings, fraction: float, method: str = "supervised"
):
    """The sweep's best budget for ``method`` on ``fraction`` (ties go to the smaller budget), or
    None while a run of that sweep is missing."""
    sweep = [records.get(run.name) for run in fraction_sweep(settings, records, fraction, method)]
    if None in sweep:
        return None
    return best_of_sweep(sweep)["multiplier"]


def swept_runs(
    settings: StudySettings, records: dict[str, dict], method: str, fraction: float
) -> list[Run]:
    """The sweep, then (once it has finished) the other seeds at its best budget."""
    runs = fraction_sweep(settings, records, fraction, method)
    multiplier = best_multiplier(records, settings, fraction, method)
    if multiplier is not None:
        for seed in settings.seeds[1:]:
            name = f"{method}_{percent(fraction)}_seed{seed}"
            runs.append(budget_run(settings, method, fraction, seed, multiplier, name))
    return runs


def best_of_sweep(sweep: list[dict]) -> dict:
    """The sweep record with the highest top-1; a tie goes to the smaller budget, since the
    extra training bought nothing."""
    return max(sweep, key=lambda record: (record["top_1"], -record["multiplier"]))


def teacher_name(settings: StudySettings, records: dict[str, dict], fraction: float) -> str | None:
    """The distillation teacher of ``fraction``: the first seed's fine-tune at the best budget of
    its sweep, or None while that sweep runs."""
    multiplier = best_multiplier(records, settings, fraction, "finetune")
    if multiplier is None:
        return None
    return sweep_run_name("finetune", fraction, multiplier, settings.seeds[0])


def teacher_module(settings: StudySettings, name: str) -> str:
    return os.path.join(settings.record_dir, "modules", name)


def distill_runs(
    settings: StudySettings, records: dict[str, dict], seeds: tuple[int, ...]
) -> list[Run]:
    """The same-size and the small student of each fraction for ``seeds``, once the fraction's
    teacher is known."""
    runs = []
    for fraction in SEMI_SUPERVISED:
        teacher = teacher_name(settings, records, fraction)
        if teacher is None:
            continue
        for seed in seeds:
            distill = (
                "--flagfile=flags/fashion_mnist/distill.flags",
                f"--teacher={teacher_module(settings, teacher)}",
                f"--label_fraction={fraction:g}",
                f"--seed={seed}",
                f"--distill_alpha={settings.distill_alpha:g}",
                f"--train_epochs={settings.distill_epochs:g}",
                f"--checkpoint_epochs={settings.distill_epochs / 5:g}",
            )
            students = {
                "self_distill": f"--checkpoint={settings.encoder_source}",
                "distill_small": f"--width_multiplier={STUDENT_WIDTH:g}",
            }
            for method, student in students.items():
                name = f"{method}_{percent(fraction)}_seed{seed}"
                runs.append(Run(name, method, fraction, seed, (*distill, student), 0.0, teacher))
    return runs


def plan(settings: StudySettings, records: dict[str, dict]) -> list[Run]:
    """Every run known so far, in an order that satisfies dependencies; the runs of the later
    seeds appear once their fraction's sweep is recorded, the students once their teacher is."""
    runs = []
    if not settings.encoder:
        runs.append(
            Run(
                "pretrain",
                "pretrain",
                1.0,
                0,
                (
                    "--flagfile=flags/fashion_mnist/pretrain.flags",
                    f"--train_epochs={settings.pretrain_epochs:g}",
                ),
            )
        )
    runs += [Run(f"probe_{encoder}", "probe", 1.0, 0, ()) for encoder in PROBE_ENCODERS]
    for fraction in FINETUNE_EPOCHS:
        runs += swept_runs(settings, records, "finetune", fraction)
    runs += distill_runs(settings, records, settings.seeds[:1])
    for fraction in SEMI_SUPERVISED:
        runs += swept_runs(settings, records, "supervised", fraction)
    runs += distill_runs(settings, records, settings.seeds[1:])
    runs += swept_runs(settings, records, "supervised", 1.0)  # the costliest runs last
    return runs


ENCODER_DEPENDENT = ("finetune", "self_distill", "distill_small")


def encoder_fingerprint(settings: StudySettings) -> str:
    """What identifies the encoder: the bytes of a given module's variables, or the flags of
    the study's own pretraining run."""
    digest = hashlib.sha256()
    if not settings.encoder:
        digest.update(json.dumps([settings.pretrain_epochs, settings.extra_flags]).encode())
        return digest.hexdigest()[:16]
    variables = os.path.join(settings.encoder, "variables")
    folder = variables if os.path.isdir(variables) else settings.encoder
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def expanded_flags(flags: tuple[str, ...]) -> list[str]:
    """``flags`` with each flagfile (relative to the repository, as the runs see it) replaced by
    the flags it holds: what a run is actually given."""
    return expand_flagfiles(list(flags), REPO_ROOT)


def portable(flags: list[str], settings: StudySettings) -> list[str]:
    """``flags`` without this machine's paths: the encoder's path becomes ``<encoder>`` (its
    fingerprint identifies it) and the record folder ``<record_dir>`` (a teacher's module there
    is identified by the teacher's key), so a clone in another folder keeps its records."""
    places = {settings.encoder_source: "<encoder>", settings.record_dir: "<record_dir>"}
    for path, placeholder in places.items():
        flags = [flag.replace(path, placeholder) for flag in flags]
    return flags


def inputs_of(run: Run, settings: StudySettings, encoder: str, records: dict[str, dict]) -> str:
    """A key of everything a run's result depends on: its expanded flags (without machine
    paths), the flags added to every run, the encoder for the runs that start from it, and a
    student's teacher's key. A record with another key is stale."""
    depends = run.method in ENCODER_DEPENDENT or run.name == "probe_simclr"
    teacher = records.get(run.teacher, {}).get("inputs", "") if run.teacher else ""
    flags = portable(expanded_flags(run.flags), settings)
    payload = [flags, settings.extra_flags, encoder if depends else "", teacher]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def execute(run: Run, settings: StudySettings) -> dict:
    """Run ``run`` (a ``tf-simclr`` process, or a probe in process); its record."""
    if run.method == "probe":
        started = time.time()
        record = {**dataclasses.asdict(run), **probe(run.name.removeprefix("probe_"), settings)}
        record["seconds"] = time.time() - started
        return record
    model_dir = os.path.join(settings.run_dir, run.name)
    # Only the runs that may become a teacher (the first seed's fine-tuning sweep) export their
    # module; exporting the others costs time for nothing.
    candidate = run.method == "finetune" and run.seed == settings.seeds[0] and run.multiplier > 0
    flags = (*run.flags, "--export_hub" if candidate else "--noexport_hub", *settings.extra_flags)
    seconds, command = run_tf_simclr(run.name, flags, model_dir, "study.log")
    with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    evaluation = result["eval"]
    record = {
        **dataclasses.asdict(run),
        "top_1": evaluation.get("label_top_1_accuracy", evaluation.get("knn_top_1_accuracy")),
        "seconds": seconds,
        "images_per_second": result["train"].get("images_per_second"),
        "command": command,
    }
    print(f"    top-1 {record['top_1']:.4f} in {record['seconds']:.0f} s", flush=True)
    return record


def install_teachers(settings: StudySettings, records: dict[str, dict]) -> None:
    """Copy each known teacher's newest hub module from its model_dir to
    ``<record_dir>/modules/<teacher>`` (committed with the records, so a fresh machine has it),
    and drop the modules of that fraction's former teachers."""
    modules = os.path.join(settings.record_dir, "modules")
    for fraction in SEMI_SUPERVISED:
        name = teacher_name(settings, records, fraction)
        if name is None:
            continue
        destination = teacher_module(settings, name)
        if not os.path.isdir(destination):
            hub_dir = os.path.join(settings.run_dir, name, "hub")
            if not os.path.isdir(hub_dir):
                raise FileNotFoundError(
                    f"the teacher {name} has a record but no module in {destination} or "
                    f"{hub_dir}; delete {name}.json from {settings.record_dir} to rerun it"
                )
            newest = max(os.listdir(hub_dir), key=int)
            shutil.copytree(os.path.join(hub_dir, newest), destination)
        former = f"finetune_{percent(fraction)}_"
        for other in os.listdir(modules):
            if other.startswith(former) and other != name:
                shutil.rmtree(os.path.join(modules, other))


def write_record(record: dict, settings: StudySettings) -> dict:
    os.makedirs(settings.record_dir, exist_ok=True)
    path = os.path.join(settings.record_dir, f"{record['name']}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)
    return record


def read_records(settings: StudySettings) -> dict[str, dict]:
    records = {}
    if os.path.isdir(settings.record_dir):
        for name in sorted(os.listdir(settings.record_dir)):
            if name.endswith(".json"):
                with open(os.path.join(settings.record_dir, name), encoding="utf-8") as handle:
                    record = json.load(handle)
                if isinstance(record, dict) and "name" in record:  # not results.json
                    records[record["name"]] = record
    return records


def probe(encoder: str, settings: StudySettings) -> dict:
    """kNN and converged linear-probe accuracy of ``encoder`` ("pixels", "random" or "simclr")
    features, on the recipes' data (``extra_flags`` may change it, e.g. to synthetic images)."""
    print(f"\n=== probe of {PROBE_LABELS[encoder]}", flush=True)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras
    from absl import flags

    from tf_simclr import run as binary
    from tf_simclr.checkpoints import restore_weights
    from tf_simclr.data import build_dataset, load_source
    from tf_simclr.data.subsets import select_subset
    from tf_simclr.models import SimCLRModel
    from tf_simclr.training import evaluate, linear_probe

    values = flags.FlagValues()
    binary.define_flags(values)
    recipe = os.path.join(REPO_ROOT, "flags", "fashion_mnist", "pretrain.flags")
    binary.parse_flags(
        values,
        [
            "study",
            f"--flagfile={recipe}",
            "--model_dir=unused",
            "--precision=float32",
            *settings.extra_flags,
        ],
    )
    config = binary.configs_from_flags(values.flag_values_dict())
    data, train = config.data, config.train

    def split(name: str, limit: int | None = None):
        source, info = load_source(data.dataset, split=name, data_dir=data.data_dir)
        count = info.num_examples if limit is None else min(limit, info.num_examples)
        batches = build_dataset(
            source.take(count),
            count,
            phase="eval",
            global_batch_size=train.eval_batch_size,
            augment=config.augment,
            training=False,
        )
        return batches, info.num_classes

    if encoder == "pixels":

        def features(dataset) -> tuple[np.ndarray, np.ndarray]:
            pixels, labels = [], []
            for batch in dataset:
                images = tf.reduce_mean(batch["image"], axis=-1)
                pixels.append(tf.reshape(images, [tf.shape(images)[0], -1]).numpy())
                labels.append(batch["label"].numpy())
            return np.concatenate(pixels), np.concatenate(labels)
    else:
        model_config = dataclasses.replace(config.model, num_classes=0)
        if encoder == "simclr":
            from tf_simclr import checkpoints

            model_config = dataclasses.replace(
                checkpoints.load_model_config(settings.encoder_source),
                num_classes=0,
                dtype_policy="float32",
            )
        tf_keras.utils.set_random_seed(data.seed)
        model = SimCLRModel(model_config).build_for_size(config.augment.image_size)
        if encoder == "simclr":
            restore_weights(model, settings.encoder_source, include_supervised_head=False)

        def features(dataset) -> tuple[np.ndarray, np.ndarray]:
            values, labels = evaluate.extract_features(model, dataset, normalize=False)
            return values.numpy(), labels.numpy()

    bank, num_classes = split(data.train_split, train.knn_bank_size)
    train_set, _ = split(data.train_split)
    test_set, _ = split(data.eval_split)
    bank_x, bank_y = features(bank)
    train_x, train_y = features(train_set)
    test_x, test_y = features(test_set)

    def unit(x: np.ndarray) -> tf.Tensor:
        return tf.math.l2_normalize(tf.constant(x, tf.float32), axis=-1)

    result = {
        "knn_top_1": evaluate.weighted_knn_accuracy(
            unit(bank_x),
            tf.constant(bank_y, tf.int32),
            unit(test_x),
            tf.constant(test_y, tf.int32),
            num_classes,
            k=train.knn_k,
            temperature=train.knn_temperature,
        ),
        "feature_dim": int(train_x.shape[1]),
        "linear": {},
    }
    for fraction in FRACTIONS:
        chosen = select_subset(train_y, label_fraction=fraction, seed=data.seed)
        outcome = linear_probe.linear_probe_accuracy(
            train_x[chosen], train_y[chosen], test_x, test_y, num_classes
        )
        result["linear"][f"{fraction:g}"] = outcome["linear_top_1_accuracy"]
    print(f"    kNN {result['knn_top_1']:.4f}, linear {result['linear']}", flush=True)
    return result


def summarize(records: list[dict]) -> dict[tuple[str, float], dict]:
    """Mean, sample standard deviation (ddof=1; 0 for one seed), count and summed wall time of
    the top-1 accuracies of each (method, label fraction). Sweep runs count only as their
    sweep's best budget on the first seed."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for record in records:
        if record["method"] in ("probe", "pretrain"):
            continue
        if _is_sweep(record):
            sweep = [
                r
                for r in records
                if _is_sweep(r)
                and (r["method"], r["fraction"]) == (record["method"], record["fraction"])
            ]
            if record is not best_of_sweep(sweep):
                continue
        groups.setdefault((record["method"], record["fraction"]), []).append(record)
    summary = {}
    for key, members in groups.items():
        accuracies = np.array([member["top_1"] for member in members], dtype=np.float64)
        summary[key] = {
            "mean": float(accuracies.mean()),
            "std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
            "min": float(accuracies.min()),
            "max": float(accuracies.max()),
            "count": len(accuracies),
            "seconds": float(sum(member["seconds"] for member in members)),
        }
    return summary


def _is_sweep(record: dict) -> bool:
    return record["method"] in SWEPT_METHODS and "_x" in record["name"]


def targets(
    summary: dict, probes: dict[str, dict], teachers: dict[float, float]
) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: ``(target, met or None when not measured yet, evidence)``.
    ``teachers``: the top-1 of each fraction's distillation teacher."""
    rows: list[tuple[str, bool | None, str]] = []
    simclr, pixels = probes.get("simclr"), probes.get("pixels")
    if simclr and pixels:
        knn_ok = simclr["knn_top_1"] > pixels["knn_top_1"]
        linear = simclr["linear"]["1"]
        linear_ok = linear > pixels["linear"]["1"] and linear >= 0.88
        rows.append(
            (
                "encoder beats raw pixels on kNN and linear eval (100%), linear >= 0.88",
                knn_ok and linear_ok,
                f"kNN {simclr['knn_top_1']:.4f} vs {pixels['knn_top_1']:.4f}; linear "
                f"{simclr['linear']['1']:.4f} vs {pixels['linear']['1']:.4f}",
            )
        )
    else:
        rows.append(("encoder beats raw pixels (kNN, linear eval >= 0.88)", None, "not run"))

    def entry(method: str, fraction: float):
        return summary.get((method, fraction))

    tuned, base = entry("finetune", 0.01), entry("supervised", 0.01)
    if tuned and base:
        rows.append(
            (
                "fine-tuning on 1% beats converged supervised 1% by >= 3 points, no overlap",
                tuned["mean"] - base["mean"] >= 0.03 and tuned["min"] > base["max"],
                f"{tuned['mean']:.4f} [{tuned['min']:.4f}, {tuned['max']:.4f}] vs "
                f"{base['mean']:.4f} [{base['min']:.4f}, {base['max']:.4f}]",
            )
        )
    else:
        rows.append(("fine-tuning on 1% beats supervised 1% by >= 3 points", None, "not run"))
    base10 = entry("supervised", 0.1)
    best10 = max(
        (e for e in (entry(m, 0.1) for m in ("finetune", "self_distill")) if e),
        key=lambda e: e["mean"],
        default=None,
    )
    if best10 and base10:
        rows.append(
            (
                "fine-tuning or distillation on 10% beats converged supervised 10%",
                best10["mean"] > base10["mean"],
                f"{best10['mean']:.4f} vs {base10['mean']:.4f}",
            )
        )
    else:
        rows.append(("10% beats converged supervised 10%", None, "not run"))
    full, distilled = entry("supervised", 1.0), entry("self_distill", 0.1)
    if full and distilled:
        rows.append(
            (
                "moonshot: 10% + distillation reaches supervised 100%",
                distilled["mean"] >= full["mean"],
                f"{distilled['mean']:.4f} vs {full['mean']:.4f} "
                f"(gap {full['mean'] - distilled['mean']:+.4f})",
            )
        )
    else:
        rows.append(("moonshot: 10% + distillation reaches supervised 100%", None, "not run"))
    kept = []
    for fraction in SEMI_SUPERVISED:
        student, teacher = entry("distill_small", fraction), teachers.get(fraction)
        if student and teacher:
            kept.append(student["mean"] / teacher)
    if kept:
        rows.append(
            (
                "the smaller student keeps >= 95% of its teacher's accuracy",
                min(kept) >= 0.95,
                ", ".join(f"{value:.1%}" for value in kept),
            )
        )
    else:
        rows.append(("the smaller student keeps >= 95% of its teacher", None, "not run"))
    return rows


def markdown_table(records: list[dict], settings: StudySettings) -> str:
    """The reference and encoder rows, the label-efficiency rows, the sweeps and the targets.
    A cell whose budget sweep has not finished is marked, and no target uses it."""
    summary = summarize(records)
    by_name = {record["name"]: record for record in records}
    sweeps = {
        (method, fraction): fraction_sweep(settings, by_name, fraction, method)
        for method, base in SWEPT_METHODS.items()
        for fraction in base
    }
    unfinished = {
        (method, fraction)
        for method, fraction in sweeps
        if best_multiplier(by_name, settings, fraction, method) is None
    }
    probes = {r["name"].removeprefix("probe_"): r for r in records if r["method"] == "probe"}
    lines = [
        "| features (fixed) | kNN | linear 1% | linear 10% | linear 100% |",
        "|---|---:|---:|---:|---:|",
    ]
    for encoder, label in PROBE_LABELS.items():
        if encoder in probes:
            entry = probes[encoder]
            cells = " | ".join(f"{entry['linear'][f'{f:g}']:.4f}" for f in FRACTIONS)
            lines.append(f"| {label} | {entry['knn_top_1']:.4f} | {cells} |")
    lines += ["", "| method | 1% labels | 10% labels | 100% labels | wall time |"]
    lines.append("|---|---:|---:|---:|---:|")
    for method, label in METHODS.items():
        cells, seconds = [], 0.0
        for fraction in FRACTIONS:
            entry = summary.get((method, fraction))
            if entry is None:
                cells.append("")
                continue
            seconds += entry["seconds"]
            spread = f" ± {entry['std']:.4f}" if entry["count"] > 1 else ""
            running = " (sweep not finished)" if (method, fraction) in unfinished else ""
            cells.append(f"{entry['mean']:.4f}{spread} ({entry['count']}){running}")
        lines.append(f"| {label} | {' | '.join(cells)} | {seconds / 60:.1f} min |")
    columns = max(len(sweep) for sweep in sweeps.values())
    multipliers = [run.multiplier for run in max(sweeps.values(), key=len)]
    lines += ["", "Budget sweeps (seed 0; epochs over the labeled subset):", ""]
    lines += ["| method | labels | " + " | ".join(f"{m:g}x" for m in multipliers) + " |"]
    lines.append("|---|---|" + "---:|" * columns)
    for (method, fraction), sweep in sweeps.items():
        cells = []
        for run in sweep:
            record = by_name.get(run.name)
            epochs = SWEPT_METHODS[method][fraction] * run.multiplier
            cells.append(f"{record['top_1']:.4f} ({epochs:g} ep)" if record else "")
        cells += [""] * (columns - len(cells))
        lines.append(f"| {method} | {fraction:.0%} | " + " | ".join(cells) + " |")
    converged = {key: value for key, value in summary.items() if key not in unfinished}
    lines += ["", "| target | status | measured |", "|---|---|---|"]
    teacher_names = {
        fraction: name
        for fraction in SEMI_SUPERVISED
        if (name := teacher_name(settings, by_name, fraction)) in by_name
    }
    teachers = {fraction: by_name[name]["top_1"] for fraction, name in teacher_names.items()}
    described_teachers = ", ".join(
        f"{name} ({teachers[fraction]:.4f})" for fraction, name in teacher_names.items()
    )
    for text, met, evidence in targets(converged, probes, teachers):
        status = "not run" if met is None else "**met**" if met else "**missed**"
        lines.append(f"| {text} | {status} | {evidence} |")
    encoder = (
        os.path.relpath(settings.encoder, REPO_ROOT)
        if settings.encoder
        else f"pretrained here, {settings.pretrain_epochs:g} epochs"
    )
    lines += [
        "",
        "Cells: top-1 on the 10,000 test images, mean ± sample standard deviation (number of "
        f"seeds). Encoder: {encoder}. Distillation: {settings.distill_epochs:g} epochs, alpha "
        f"{settings.distill_alpha:g}, teachers: {described_teachers or 'none yet'}.",
    ]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str) -> None:
    """Accuracy against label fraction (log axis): one line per method, the seed spread as bars,
    the fixed-feature linear probes dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    summary = summarize(records)
    figure, axes = pyplot.subplots(figsize=(10, 4.5))
    for method, label in METHODS.items():
        points = [(f, summary[(method, f)]) for f in FRACTIONS if (method, f) in summary]
        if points:
            axes.errorbar(
                [100 * f for f, _ in points],
                [entry["mean"] for _, entry in points],
                yerr=[entry["std"] for _, entry in points],
                marker="o",
                capsize=3,
                label=label,
            )
    for record in records:
        if record["method"] == "probe":
            encoder = record["name"].removeprefix("probe_")
            axes.plot(
                [100 * f for f in FRACTIONS],
                [record["linear"][f"{f:g}"] for f in FRACTIONS],
                linestyle="--",
                marker=".",
                label=f"linear probe: {PROBE_LABELS[encoder]}",
            )
    axes.set_xscale("log")
    axes.set_xticks([1, 10, 100], labels=["1%", "10%", "100%"])
    axes.set_xlabel("labeled fraction of the 60,000 training images")
    axes.set_ylabel("top-1 accuracy (10,000 test images)")
    axes.set_title("Fashion-MNIST, ResNet-18 width 0.25: label efficiency")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def current_records(settings: StudySettings, encoder: str) -> tuple[list[dict], list[Run]]:
    """The recorded runs of the plan whose records are current for the ``encoder`` fingerprint
    (in plan order), and the runs still to do (missing or stale records)."""
    records = read_records(settings)
    done, pending = [], []
    for run in plan(settings, records):
        current = records.get(run.name, {}).get("inputs") == inputs_of(
            run, settings, encoder, records
        )
        (done if current else pending).append(records[run.name] if current else run)
    return done, pending


def run_study(settings: StudySettings) -> list[dict]:
    """Run every run whose record is missing or stale (the plan grows as sweeps finish);
    return all records."""
    encoder = encoder_fingerprint(settings)
    while True:
        _, pending = current_records(settings, encoder)
        selected = [run for run in pending if settings.selects(run.name)]
        if not selected:
            break
        run = selected[0]
        records = read_records(settings)
        install_teachers(settings, records)
        if run.name in records:
            print(
                f"\n{run.name}: its record is stale (flags, encoder or teacher changed); rerunning"
            )
        record = execute(run, settings)
        record["inputs"] = inputs_of(run, settings, encoder, records)
        write_record(record, settings)
    return current_records(settings, encoder)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = StudySettings(run_dir="")
    parser.add_argument("--run_dir", default=os.path.join(REPO_ROOT, "study_run"))
    parser.add_argument("--record_dir", default=defaults.record_dir)
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)))
    parser.add_argument(
        "--encoder",
        default=RELEASED_ENCODER if os.path.isdir(RELEASED_ENCODER) else "",
        help="Hub module or model_dir of the encoder; empty pretrains one.",
    )
    parser.add_argument("--pretrain_epochs", type=float, default=defaults.pretrain_epochs)
    parser.add_argument(
        "--budget_multipliers", default=",".join(f"{m:g}" for m in defaults.budget_multipliers)
    )
    parser.add_argument(
        "--max_budget_multiplier",
        type=float,
        default=defaults.max_budget_multiplier,
        help="A sweep whose longest budget wins is doubled up to this multiplier.",
    )
    parser.add_argument(
        "--min_budget_gain",
        type=float,
        default=defaults.min_budget_gain,
        help="Top-1 by which the longest budget must win for the sweep to double again.",
    )
    parser.add_argument("--distill_epochs", type=float, default=defaults.distill_epochs)
    parser.add_argument("--distill_alpha", type=float, default=defaults.distill_alpha)
    parser.add_argument("--extra_flags", default="", help="Appended to every run (shell words).")
    parser.add_argument(
        "--only",
        default="",
        help="Comma-separated run names or shell patterns: run just these of the pending runs.",
    )
    parser.add_argument("--table", default="", help="Markdown output (default: in record_dir).")
    parser.add_argument("--plot", default="", help="PNG output (default: in record_dir).")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Write the table and the plot of the current records; run nothing.",
    )
    args = parser.parse_args()
    settings = StudySettings(
        run_dir=os.path.abspath(args.run_dir),
        record_dir=os.path.abspath(args.record_dir),
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        encoder=os.path.abspath(args.encoder) if args.encoder else "",
        pretrain_epochs=args.pretrain_epochs,
        budget_multipliers=tuple(float(m) for m in args.budget_multipliers.split(",")),
        max_budget_multiplier=args.max_budget_multiplier,
        min_budget_gain=args.min_budget_gain,
        distill_epochs=args.distill_epochs,
        distill_alpha=args.distill_alpha,
        extra_flags=tuple(shlex.split(args.extra_flags)),
        only=tuple(pattern for pattern in args.only.split(",") if pattern),
    )
    started = time.time()
    if args.report_only:
        records, pending = current_records(settings, encoder_fingerprint(settings))
        print(f"{len(pending)} planned runs not recorded yet: {[run.name for run in pending]}")
    else:
        records = run_study(settings)
    table = markdown_table(records, settings)
    total = sum(record["seconds"] for record in records)
    table += f"Total wall time of the runs: {total / 60:.1f} min.\n"
    table_path = args.table or os.path.join(settings.record_dir, "label_efficiency.md")
    plot_path = args.plot or os.path.join(settings.record_dir, "label_efficiency.png")
    with open(table_path, "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(settings.record_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=2)
    plot(records, plot_path)
    print("\n" + table)
    print(f"this invocation: {time.time() - started:.0f} s; table {table_path}, plot {plot_path}")


if __name__ == "__main__":
    main()
