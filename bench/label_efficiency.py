"""Label-efficiency study on Fashion-MNIST: SimCLRv2's claims (Chen et al. 2020, sections 1-4;
Figure 1, Tables 2-3) checked at the scale of a 2-core CPU, at several encoder sizes.

The recipes' network is ResNet-18 at width 0.25 (CIFAR stem, 28 px); every row is scored on the
10,000 test images:

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

**The width ladder** (issue 26, SimCLRv2 section 3: bigger self-supervised models gain more from
few labels). Every width of ``widths`` (default 0.125, 0.25, 0.5) has its encoder: at width 0.25
the released one, never retrained; at the others a pretraining of
``pretrained/fashion_mnist/pretrain.flags`` for ``pretrain_epochs`` (the release's flags, with
``--width_multiplier``) in the stable model_dir ``<run_dir>/pretrain_width<w>``, which a rerun
resumes. Once it is recorded, its width gets the probes, the fine-tuning sweeps at 1% and 10%
and their seeds, and supervised training on the same 1% subsets at that width, all under the
same budget rule (the supervised 10% and 100% baselines stay at width 0.25). **Big-to-small
distillation** (SimCLRv2 section 2.3, Table 3): the seed-0 fine-tune of ``teacher_width`` (0.5)
at its sweep's best budget teaches, for every seed, a student of each width of ``big_students``
(0.25; 0.125 optional) initialised from that width's encoder, exactly like the self-distilled
student, so that the comparison with it changes the teacher only.
``bench/label_efficiency_size.py`` reports the ladder: top-1 against encoder parameters, the
gain over supervised by width, the pretraining kNN curves and the issue's targets.

The study spans sessions: every finished run writes ``<record_dir>/<name>.json``; the modules
other runs start from (the teachers, the study's pretrained encoders) go to
``<record_dir>/modules/<run>/``; both are meant to be committed. A recorded run is skipped
unless its inputs changed: its width, its expanded flags (the flagfiles' contents, not their
names), the encoder, and for a student its teacher's inputs. Runs at width 0.25 keep their
names (``finetune_1pct_x1_seed0``); the others carry their width
(``finetune_width0.5_1pct_x1_seed0``, ``pretrain_width0.5``; ``big_to_small_1pct_seed0`` is the
width-0.25 student of the big teacher). Scratch model_dirs go to ``run_dir``, one per run name:
an interrupted run resumes from its own checkpoints, and one left there by other inputs is moved
aside. At the end, in ``record_dir``: ``results.json`` (every current record), the width-0.25
study's ``label_efficiency.md`` and ``.png``, and the ladder's ``by_width.md`` (every target
marked met, missed or pending), ``by_width.png`` and ``knn_by_width.png``.

    .venv/bin/python bench/label_efficiency.py                     # the whole study, resumable
    .venv/bin/python bench/label_efficiency.py --seeds=0 --extra_flags="--train_steps=2"
    .venv/bin/python bench/label_efficiency.py --only="self_distill_10pct_*"  # some pending runs
    .venv/bin/python bench/label_efficiency.py --only="pretrain_width*"       # the encoders first
    .venv/bin/python bench/label_efficiency.py --widths=0.25 --report_only    # one width's rows
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import time

import label_efficiency_size as size
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
BASE_WIDTH = 0.25  # the recipes' width (flags/fashion_mnist/common.flags), the released encoder's
WIDTHS = (0.125, 0.25, 0.5)  # the ladder of issue 26
TEACHER_WIDTH = 0.5  # the big teacher of big-to-small distillation
STUDENT_WIDTH = 0.125  # the small student of the width-0.25 teacher (distill_small)
PROBE_ENCODERS = ("pixels", "random", "simclr")
METHODS = {
    "supervised": "supervised only (best budget of the sweep)",
    "finetune": "SimCLRv2 fine-tuned (proj_head_1, best budget of the sweep)",
    "self_distill": "SimCLRv2 self-distilled (same size, labels mixed in)",
    "distill_small": f"SimCLRv2 distilled into width {STUDENT_WIDTH} (labels mixed in)",
}
# The width of the network each row of the width-0.25 table trains.
METHOD_WIDTHS = {
    "supervised": BASE_WIDTH,
    "finetune": BASE_WIDTH,
    "self_distill": BASE_WIDTH,
    "distill_small": STUDENT_WIDTH,
}
BIG_TO_SMALL = "big_to_small"
PROBE_LABELS = {
    "pixels": "raw pixels",
    "random": "randomly initialised encoder",
    "simclr": "SimCLRv2 encoder",
}
RUN_MARKER = "study_run.json"  # in a run's model_dir: the inputs it runs and its wall time so far


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """What to run. ``encoder``: the width-0.25 encoder, a hub module or model_dir to evaluate
    and fine-tune from ("" pretrains one in the study for ``pretrain_epochs``, as the other
    widths always are); ``widths``: the encoder widths whose runs are planned;
    ``teacher_width``: the big teacher of big-to-small distillation, whose students are
    ``big_students`` wide; ``only``: run just the pending runs whose names match (the others
    stay pending)."""

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
    widths: tuple[float, ...] = WIDTHS
    teacher_width: float = TEACHER_WIDTH
    big_students: tuple[float, ...] = (BASE_WIDTH,)

    def __post_init__(self) -> None:
        if any(student >= self.teacher_width for student in self.big_students):
            raise ValueError(
                f"big-to-small students {self.big_students} must be narrower than the teacher "
                f"(width {self.teacher_width:g}): pass smaller --big_students."
            )

    def selects(self, name: str) -> bool:
        """Whether a pending run is run now: every run, or those matching a pattern of ``only``
        (shell-style, e.g. ``self_distill_10pct_*``)."""
        return not self.only or any(fnmatch.fnmatchcase(name, p) for p in self.only)

    def pretrained_here(self, width: float) -> bool:
        """Whether the study pretrains the encoder of ``width`` (every width but the released
        one's)."""
        return width != BASE_WIDTH or not self.encoder

    def encoder_for(self, width: float) -> str:
        """The encoder of ``width``: the given module at width 0.25, else the study's
        pretraining's module, installed in the record folder once it is recorded."""
        if not self.pretrained_here(width):
            return self.encoder
        return module_path(self, pretrain_name(width))

    @property
    def encoder_source(self) -> str:
        return self.encoder_for(BASE_WIDTH)


@dataclasses.dataclass(frozen=True)
class Run:
    """One step of the study: a ``tf-simclr`` process, or (``method == "probe"``) an in-process
    evaluation of fixed features. ``width``: the width of the network it trains (or probes);
    ``encoder_width``: the width of the SimCLRv2 encoder its result depends on (it starts from
    it, or its teacher does), 0 for none."""

    name: str
    method: str
    fraction: float
    seed: int
    flags: tuple[str, ...]
    multiplier: float = 0.0
    teacher: str = ""
    width: float = BASE_WIDTH
    encoder_width: float = 0.0


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def width_tag(width: float) -> str:
    """What a run name carries of its width: nothing at width 0.25 (the study's first records
    keep their names), ``_width<w>`` otherwise."""
    return "" if width == BASE_WIDTH else f"_width{width:g}"


def run_name(
    method: str, fraction: float, seed: int, width: float = BASE_WIDTH, multiplier: float = 0.0
) -> str:
    """``<method>[_width<w>]_<fraction>pct[_x<multiplier>]_seed<seed>``; a multiplier names a
    run of the first seed's budget sweep."""
    budget = f"_x{multiplier:g}" if multiplier else ""
    return f"{method}{width_tag(width)}_{percent(fraction)}{budget}_seed{seed}"


def pretrain_name(width: float) -> str:
    return f"pretrain{width_tag(width)}"


def probe_name(encoder: str, width: float = BASE_WIDTH) -> str:
    return f"probe_{encoder}{width_tag(width)}"


def width_flags(width: float) -> tuple[str, ...]:
    """The flag that sets a width other than the recipes' (none at width 0.25, so that the
    first records' flags, and so their keys, stay as they were)."""
    return () if width == BASE_WIDTH else (f"--width_multiplier={width:g}",)


def record_width(record: dict) -> float:
    """The width of the network a record's run trained; records written before the ladder
    carry none: the small student's is 0.125, the others' 0.25."""
    default = STUDENT_WIDTH if record["method"] == "distill_small" else BASE_WIDTH
    return float(record.get("width", default))


def module_path(settings: StudySettings, name: str) -> str:
    """Where the hub module of the run ``name`` is installed for the runs that start from it."""
    return os.path.join(settings.record_dir, "modules", name)


def budget_run(
    settings: StudySettings,
    method: str,
    fraction: float,
    seed: int,
    multiplier: float,
    name: str,
    width: float = BASE_WIDTH,
) -> Run:
    """A supervised or fine-tuning run at ``width`` of ``multiplier`` x its method's base
    schedule."""
    epochs = SWEPT_METHODS[method][fraction] * multiplier
    if method == "supervised":
        flags = (
            f"--flagfile=flags/fashion_mnist/supervised_{percent(fraction)}.flags",
            f"--seed={seed}",
            f"--train_epochs={epochs:g}",
            f"--checkpoint_epochs={epochs / 4:g}",
            *width_flags(width),
        )
        return Run(name, method, fraction, seed, flags, multiplier, width=width)
    flags = (
        f"--flagfile=flags/fashion_mnist/finetune_{percent(fraction)}.flags",
        f"--checkpoint={settings.encoder_for(width)}",
        f"--seed={seed}",
        f"--train_epochs={epochs:g}",
        f"--checkpoint_epochs={epochs:g}",
        *width_flags(width),
    )
    return Run(name, method, fraction, seed, flags, multiplier, width=width, encoder_width=width)


def fraction_sweep(
    settings: StudySettings,
    records: dict[str, dict],
    fraction: float,
    method: str = "supervised",
    width: float = BASE_WIDTH,
) -> list[Run]:
    """The budget sweep of ``method`` at ``width`` on one fraction and the first seed:
    ``budget_multipliers``, extended by doubling while the largest budget beats every shorter
    one by at least ``min_budget_gain`` (a run still improving at its largest budget is not
    converged; one that gains less than a tenth of a point, ten test images, has reached its
    plateau), up to ``max_budget_multiplier``."""
    seed = settings.seeds[0]
    multipliers = list(settings.budget_multipliers)
    while True:
        names = {m: run_name(method, fraction, seed, width, m) for m in multipliers}
        runs = [
            budget_run(settings, method, fraction, seed, m, names[m], width) for m in multipliers
        ]
        recorded = [records.get(run.name) for run in runs]
        longest = multipliers[-1]
        if None in recorded or longest * 2 > settings.max_budget_multiplier:
            return runs
        gain = recorded[-1]["top_1"] - max(record["top_1"] for record in recorded[:-1])
        if gain <= 0 or round(gain, 6) < settings.min_budget_gain:
            return runs
        multipliers.append(longest * 2)


def best_multiplier(
    records: dict[str, dict],
    settings: StudySettings,
    fraction: float,
    method: str = "supervised",
    width: float = BASE_WIDTH,
):
    """The sweep's best budget for ``method`` at ``width`` on ``fraction`` (ties go to the
    smaller budget), or None while a run of that sweep is missing."""
    sweep = fraction_sweep(settings, records, fraction, method, width)
    recorded = [records.get(run.name) for run in sweep]
    if None in recorded:
        return None
    return best_of_sweep(recorded)["multiplier"]


def swept_runs(
    settings: StudySettings,
    records: dict[str, dict],
    method: str,
    fraction: float,
    width: float = BASE_WIDTH,
) -> list[Run]:
    """The sweep, then (once it has finished) the other seeds at its best budget."""
    runs = fraction_sweep(settings, records, fraction, method, width)
    multiplier = best_multiplier(records, settings, fraction, method, width)
    if multiplier is not None:
        for seed in settings.seeds[1:]:
            name = run_name(method, fraction, seed, width)
            runs.append(budget_run(settings, method, fraction, seed, multiplier, name, width))
    return runs


def best_of_sweep(sweep: list[dict]) -> dict:
    """The sweep record with the highest top-1; a tie goes to the smaller budget, since the
    extra training bought nothing."""
    return max(sweep, key=lambda record: (record["top_1"], -record["multiplier"]))


def teacher_name(
    settings: StudySettings, records: dict[str, dict], fraction: float, width: float = BASE_WIDTH
) -> str | None:
    """The distillation teacher of ``fraction`` at ``width``: the first seed's fine-tune at the
    best budget of its sweep, or None while that sweep runs."""
    multiplier = best_multiplier(records, settings, fraction, "finetune", width)
    if multiplier is None:
        return None
    return run_name("finetune", fraction, settings.seeds[0], width, multiplier)


def teacher_widths(settings: StudySettings) -> list[float]:
    """The widths whose fine-tunes teach: 0.25 (self-distillation and the small student) and
    the big teacher's, when they are in the ladder."""
    return [w for w in settings.widths if w in (BASE_WIDTH, settings.teacher_width)]


def distill_flags(
    settings: StudySettings, teacher: str, fraction: float, seed: int
) -> tuple[str, ...]:
    """Distillation from the module of ``teacher`` on the 60,000 training images, the labels of
    the seed's subset mixed in (SimCLRv2 eq. 4 with ``distill_alpha``)."""
    return (
        "--flagfile=flags/fashion_mnist/distill.flags",
        f"--teacher={module_path(settings, teacher)}",
        f"--label_fraction={fraction:g}",
        f"--seed={seed}",
        f"--distill_alpha={settings.distill_alpha:g}",
        f"--train_epochs={settings.distill_epochs:g}",
        f"--checkpoint_epochs={settings.distill_epochs / 5:g}",
    )


def distill_runs(
    settings: StudySettings, records: dict[str, dict], seeds: tuple[int, ...]
) -> list[Run]:
    """The same-size and the small student of each fraction's width-0.25 teacher for
    ``seeds``, once the teacher is known."""
    runs = []
    for fraction in SEMI_SUPERVISED:
        teacher = teacher_name(settings, records, fraction)
        if teacher is None:
            continue
        for seed in seeds:
            distill = distill_flags(settings, teacher, fraction, seed)
            self_distill = f"--checkpoint={settings.encoder_source}"
            small = f"--width_multiplier={STUDENT_WIDTH:g}"
            for method, student, width in (
                ("self_distill", self_distill, BASE_WIDTH),
                ("distill_small", small, STUDENT_WIDTH),
            ):
                # Named without a width: the small student's name says it.
                name = run_name(method, fraction, seed)
                runs.append(
                    Run(
                        name,
                        method,
                        fraction,
                        seed,
                        (*distill, student),
                        teacher=teacher,
                        width=width,
                        encoder_width=BASE_WIDTH,
                    )
                )
    return runs


def big_to_small_runs(
    settings: StudySettings, records: dict[str, dict], ready: list[float]
) -> list[Run]:
    """Big-to-small distillation (SimCLRv2 section 2.3, Table 3): each fraction's
    ``teacher_width`` fine-tune teaches a student of every width of ``big_students``, for every
    seed, once the teacher is known and the student's encoder is ``ready``. The student starts
    from its width's encoder, like the self-distilled student: only the teacher differs."""
    runs = []
    if settings.teacher_width not in settings.widths:
        return runs
    for fraction in SEMI_SUPERVISED:
        teacher = teacher_name(settings, records, fraction, settings.teacher_width)
        if teacher is None:
            continue
        for student in settings.big_students:
            if student not in ready:
                continue
            for seed in settings.seeds:
                flags = (
                    *distill_flags(settings, teacher, fraction, seed),
                    f"--checkpoint={settings.encoder_for(student)}",
                    *width_flags(student),
                )
                name = run_name(BIG_TO_SMALL, fraction, seed, student)
                runs.append(
                    Run(
                        name,
                        BIG_TO_SMALL,
                        fraction,
                        seed,
                        flags,
                        teacher=teacher,
                        width=student,
                        encoder_width=student,
                    )
                )
    return runs


def pretrain_run(settings: StudySettings, width: float) -> Run:
    """The study's pretraining of the encoder of ``width``: the recipe for ``pretrain_epochs``
    (at 60 epochs and width 0.25, the released encoder's flags)."""
    flags = (
        "--flagfile=pretrained/fashion_mnist/pretrain.flags",
        f"--train_epochs={settings.pretrain_epochs:g}",
        *width_flags(width),
    )
    return Run(pretrain_name(width), "pretrain", 1.0, 0, flags, width=width)


def encoder_ready(settings: StudySettings, records: dict[str, dict], width: float) -> bool:
    """Whether the encoder of ``width`` exists: given, or its pretraining is recorded."""
    return not settings.pretrained_here(width) or pretrain_name(width) in records


def plan(settings: StudySettings, records: dict[str, dict]) -> list[Run]:
    """Every run known so far, in an order that satisfies dependencies: the pretrainings first;
    a width's runs from its encoder once the encoder is recorded; the runs of the later seeds
    once their sweep is recorded, the students once their teacher is; the costly 100% sweep
    last."""
    widths = sorted(settings.widths)
    ready = [width for width in widths if encoder_ready(settings, records, width)]
    others = [width for width in widths if width != BASE_WIDTH]
    base = BASE_WIDTH in widths
    runs = [pretrain_run(settings, width) for width in widths if settings.pretrained_here(width)]
    if base:
        runs += [Run(probe_name(encoder), "probe", 1.0, 0, ()) for encoder in ("pixels", "random")]
    runs += [
        Run(probe_name("simclr", w), "probe", 1.0, 0, (), width=w, encoder_width=w) for w in ready
    ]
    if base:
        if BASE_WIDTH in ready:
            for fraction in FINETUNE_EPOCHS:
                runs += swept_runs(settings, records, "finetune", fraction)
        runs += distill_runs(settings, records, settings.seeds[:1])
        for fraction in SEMI_SUPERVISED:
            runs += swept_runs(settings, records, "supervised", fraction)
        runs += distill_runs(settings, records, settings.seeds[1:])
    for width in others:
        if width in ready:
            for fraction in FINETUNE_EPOCHS:
                runs += swept_runs(settings, records, "finetune", fraction, width)
        runs += swept_runs(settings, records, "supervised", 0.01, width)
    runs += big_to_small_runs(settings, records, ready)
    if base:
        runs += swept_runs(settings, records, "supervised", 1.0)  # the costliest runs last
    return runs


def encoder_fingerprint(settings: StudySettings) -> str:
    """What identifies the given encoder: the bytes of its module's variables ("" when the
    study pretrains every encoder; those are identified by their pretraining's key)."""
    if not settings.encoder:
        return ""
    digest = hashlib.sha256()
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
    """``flags`` without this machine's paths: the given encoder's path becomes ``<encoder>``
    (its fingerprint identifies it) and the record folder ``<record_dir>`` (a module there is
    identified by the key of the run that made it), so a clone in another folder keeps its
    records."""
    places = {settings.encoder: "<encoder>"} if settings.encoder else {}
    places[settings.record_dir] = "<record_dir>"
    for path, placeholder in places.items():
        flags = [flag.replace(path, placeholder) for flag in flags]
    return flags


def inputs_of(run: Run, settings: StudySettings, encoder: str, records: dict[str, dict]) -> str:
    """A key of everything a run's result depends on besides its width (which
    :func:`is_current` compares): its expanded flags (without machine paths), the flags added
    to every run, the encoder it depends on (``encoder``, the given one's fingerprint, or the
    key of the study's pretraining) and a student's teacher's key. A record with another key is
    stale."""
    source = ""
    if run.encoder_width and not settings.pretrained_here(run.encoder_width):
        source = encoder
    elif run.encoder_width:
        source = records.get(pretrain_name(run.encoder_width), {}).get("inputs", "")
    teacher = records.get(run.teacher, {}).get("inputs", "") if run.teacher else ""
    flags = portable(expanded_flags(run.flags), settings)
    payload = [flags, settings.extra_flags, source, teacher]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def is_current(record: dict | None, run: Run, key: str) -> bool:
    """Whether ``record`` stands for ``run``: recorded at the run's width with its inputs'
    key. The width is compared on its own, so a record is never reused at another width."""
    return record is not None and record_width(record) == run.width and record.get("inputs") == key


def exports_module(run: Run, settings: StudySettings) -> bool:
    """Whether ``run`` exports a hub module: the study's pretrainings (the encoders of their
    widths) and the runs that may become a teacher (the first seed's fine-tuning sweeps at the
    teachers' widths); exporting the others costs time for nothing."""
    if run.method == "pretrain":
        return True
    return (
        run.method == "finetune"
        and run.seed == settings.seeds[0]
        and run.multiplier > 0
        and run.width in teacher_widths(settings)
    )


def prepare_model_dir(settings: StudySettings, name: str, key: str) -> tuple[str, float]:
    """The model_dir of the run ``name``, ``<run_dir>/<name>``: the same at every invocation, so
    that ``tf-simclr`` resumes there a run that was cut short. Its marker (``study_run.json``)
    holds the key of the inputs it runs; a model_dir of other inputs is moved aside to
    ``<name>.stale-<its key>`` (its run is not this one's, and resuming it would mix the two).
    Returns the model_dir and the wall time earlier invocations spent in it."""
    model_dir = os.path.join(settings.run_dir, name)
    marker = os.path.join(model_dir, RUN_MARKER)
    if not os.path.exists(marker):
        return model_dir, 0.0  # a new run (or one from before the markers: resumed as it is)
    with open(marker, encoding="utf-8") as handle:
        recorded = json.load(handle)
    if recorded["inputs"] == key:
        return model_dir, float(recorded["seconds"])
    aside = f"{model_dir}.stale-{recorded['inputs']}"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(model_dir, aside)
    print(f"\n{name}: {model_dir} ran other inputs; moved to {aside}", flush=True)
    return model_dir, 0.0


def write_marker(model_dir: str, key: str, seconds: float) -> None:
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, RUN_MARKER)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"inputs": key, "seconds": seconds}, handle)
    os.replace(path + ".tmp", path)


def execute(run: Run, settings: StudySettings, key: str) -> dict:
    """Run ``run`` (a ``tf-simclr`` process, or a probe in process) for the inputs ``key``; its
    record. A run's wall time adds up the invocations that worked on it (a long pretraining may
    be interrupted and resumed); a pretraining's record keeps its kNN curve."""
    if run.method == "probe":
        started = time.time()
        encoder = run.name.removeprefix("probe_").removesuffix(width_tag(run.width))
        record = {**dataclasses.asdict(run), **probe(encoder, settings, run.width)}
        record["seconds"] = time.time() - started
        return record
    model_dir, earlier = prepare_model_dir(settings, run.name, key)
    export = "--export_hub" if exports_module(run, settings) else "--noexport_hub"
    flags = (*run.flags, export, *settings.extra_flags)
    write_marker(model_dir, key, earlier)
    started = time.time()
    try:
        _, command = run_tf_simclr(run.name, flags, model_dir, "study.log")
    finally:
        seconds = earlier + time.time() - started
        write_marker(model_dir, key, seconds)
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
    if run.method == "pretrain":
        from release_encoder import knn_curve

        record["knn_curve"] = knn_curve(model_dir)
    print(f"    top-1 {record['top_1']:.4f} in {record['seconds']:.0f} s", flush=True)
    return record


def install_modules(settings: StudySettings, records: dict[str, dict]) -> None:
    """Copy the newest hub module of each recorded pretraining of the study and of each known
    teacher from its model_dir to ``<record_dir>/modules/<run>`` (committed with the records,
    so a fresh machine has them), and drop the modules of a teacher's former sweep winners."""
    modules = os.path.join(settings.record_dir, "modules")
    wanted = [
        pretrain_name(width)
        for width in settings.widths
        if settings.pretrained_here(width) and pretrain_name(width) in records
    ]
    sweeps = {}
    for width in teacher_widths(settings):
        for fraction in SEMI_SUPERVISED:
            name = teacher_name(settings, records, fraction, width)
            if name is not None:
                wanted.append(name)
                sweeps[name] = f"finetune{width_tag(width)}_{percent(fraction)}_x"
    for name in wanted:
        destination = module_path(settings, name)
        if os.path.isdir(destination):
            continue
        hub_dir = os.path.join(settings.run_dir, name, "hub")
        if not os.path.isdir(hub_dir):
            raise FileNotFoundError(
                f"the run {name} has a record but no module in {destination} or "
                f"{hub_dir}; delete {name}.json from {settings.record_dir} to rerun it"
            )
        newest = max(os.listdir(hub_dir), key=int)
        partial = f"{destination}.partial"  # an interrupted copy is never taken for a module
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(os.path.join(hub_dir, newest), partial)
        os.replace(partial, destination)
    for name, former in sweeps.items():
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


def recipe_config(settings: StudySettings):
    """The RunConfig of the pretraining recipe (float32) with ``extra_flags``: the data and the
    architecture the probes use."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from absl import flags

    from tf_simclr import run as binary

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
    return binary.configs_from_flags(values.flag_values_dict())


def encoder_parameters(settings: StudySettings, widths: tuple[float, ...]) -> dict[float, int]:
    """The parameter count of the recipe's encoder (the ResNet, without projection or
    supervised head) at each of ``widths``, from the architecture alone."""
    from tf_simclr.models import SimCLRModel

    recipe = recipe_config(settings)
    counts = {}
    for width in widths:
        config = dataclasses.replace(recipe.model, width_multiplier=width, num_classes=0)
        built = SimCLRModel(config).build_for_size(recipe.augment.image_size)
        counts[width] = int(built.encoder.count_params())
    return counts


def probe(encoder: str, settings: StudySettings, width: float = BASE_WIDTH) -> dict:
    """kNN and converged linear-probe accuracy of ``encoder`` ("pixels", "random" or "simclr",
    the latter the encoder of ``width``) features, on the recipes' data (``extra_flags`` may
    change it, e.g. to synthetic images)."""
    shown = f" (width {width:g})" if encoder == "simclr" else ""
    print(f"\n=== probe of {PROBE_LABELS[encoder]}{shown}", flush=True)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras

    from tf_simclr.checkpoints import restore_weights
    from tf_simclr.data import build_dataset, load_source
    from tf_simclr.data.subsets import select_subset
    from tf_simclr.models import SimCLRModel
    from tf_simclr.training import evaluate, linear_probe

    config = recipe_config(settings)
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
                checkpoints.load_model_config(settings.encoder_for(width)),
                num_classes=0,
                dtype_policy="float32",
            )
        tf_keras.utils.set_random_seed(data.seed)
        model = SimCLRModel(model_config).build_for_size(config.augment.image_size)
        if encoder == "simclr":
            restore_weights(model, settings.encoder_for(width), include_supervised_head=False)

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


def counted(records: list[dict]) -> dict[tuple[str, float, float], list[dict]]:
    """The records that count, by (method, label fraction, width): every run's, except that a
    budget sweep counts only as its best budget on the first seed."""
    groups: dict[tuple[str, float, float], list[dict]] = {}
    for record in records:
        if record["method"] in ("probe", "pretrain"):
            continue
        key = (record["method"], record["fraction"], record_width(record))
        if _is_sweep(record):
            sweep = [
                r
                for r in records
                if _is_sweep(r) and (r["method"], r["fraction"], record_width(r)) == key
            ]
            if record is not best_of_sweep(sweep):
                continue
        groups.setdefault(key, []).append(record)
    return groups


def summarize(records: list[dict]) -> dict[tuple[str, float, float], dict]:
    """Mean, sample standard deviation (ddof=1; 0 for one seed), min, max, count and summed
    wall time of the top-1 accuracies of each (method, label fraction, width) that counts
    (:func:`counted`)."""
    return {
        key: {
            **size.describe([member["top_1"] for member in members]),
            "seconds": float(sum(member["seconds"] for member in members)),
        }
        for key, members in counted(records).items()
    }


SWEEP_NAME = re.compile(r"_x[0-9.]+_seed[0-9]+$")


def _is_sweep(record: dict) -> bool:
    return record["method"] in SWEPT_METHODS and SWEEP_NAME.search(record["name"]) is not None


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
        return summary.get((method, fraction, METHOD_WIDTHS[method]))

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


def base_probes(records: list[dict]) -> dict[str, dict]:
    """The probe records of the width-0.25 table, by encoder ("pixels", "random", "simclr")."""
    names = {probe_name(encoder): encoder for encoder in PROBE_ENCODERS}
    return {names[r["name"]]: r for r in records if r["name"] in names}


def markdown_table(records: list[dict], settings: StudySettings) -> str:
    """The width-0.25 study: the reference and encoder rows, the label-efficiency rows, the
    sweeps and the targets. A cell whose budget sweep has not finished is marked, and no target
    uses it."""
    summary = summarize(records)
    by_name = {record["name"]: record for record in records}
    sweeps = {
        (method, fraction): fraction_sweep(settings, by_name, fraction, method)
        for method, base in SWEPT_METHODS.items()
        for fraction in base
    }
    unfinished = {
        (method, fraction, BASE_WIDTH)
        for method, fraction in sweeps
        if best_multiplier(by_name, settings, fraction, method) is None
    }
    probes = base_probes(records)
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
            key = (method, fraction, METHOD_WIDTHS[method])
            entry = summary.get(key)
            if entry is None:
                cells.append("")
                continue
            seconds += entry["seconds"]
            spread = f" ± {entry['std']:.4f}" if entry["count"] > 1 else ""
            running = " (sweep not finished)" if key in unfinished else ""
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
        keys = [(method, f, METHOD_WIDTHS[method]) for f in FRACTIONS]
        points = [(key[1], summary[key]) for key in keys if key in summary]
        if points:
            axes.errorbar(
                [100 * f for f, _ in points],
                [entry["mean"] for _, entry in points],
                yerr=[entry["std"] for _, entry in points],
                marker="o",
                capsize=3,
                label=label,
            )
    for encoder, record in base_probes(records).items():
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


def pretraining_curve(settings: StudySettings, records: dict[str, dict], width: float):
    """The kNN curve of the pretraining of the encoder of ``width``: its record's, or for the
    given encoder the release's ``knn_curve.json`` beside its module (None when absent)."""
    if settings.pretrained_here(width):
        return records.get(pretrain_name(width), {}).get("knn_curve")
    path = os.path.join(os.path.dirname(settings.encoder.rstrip(os.sep)), "knn_curve.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["curve"]


def size_results(
    records: list[dict], settings: StudySettings, parameters: dict[float, int]
) -> size.SizeResults:
    """What the report by width reads, from the records alone: the top-1 by seed of every group
    that counts (:func:`counted`; a budget sweep once it has finished), each width's probes and
    pretraining curve, and the big teacher of each fraction. ``parameters``: the encoder
    parameters by width (:func:`encoder_parameters`)."""
    by_name = {record["name"]: record for record in records}
    top_1 = {}
    for (method, fraction, width), members in counted(records).items():
        swept = method in SWEPT_METHODS
        if swept and best_multiplier(by_name, settings, fraction, method, width) is None:
            continue
        top_1[(method, fraction, width)] = {r["seed"]: r["top_1"] for r in members}
    probes = {w: r for w in settings.widths if (r := by_name.get(probe_name("simclr", w)))}
    teachers = {}
    for fraction in SEMI_SUPERVISED:
        name = teacher_name(settings, by_name, fraction, settings.teacher_width)
        if name in by_name:
            teachers[fraction] = (name, by_name[name]["top_1"])
    curves = {w: pretraining_curve(settings, by_name, w) for w in settings.widths}
    return size.SizeResults(
        seeds=settings.seeds,
        widths=tuple(sorted(settings.widths)),
        base_width=BASE_WIDTH,
        teacher_width=settings.teacher_width,
        students=settings.big_students,
        parameters=parameters,
        top_1=top_1,
        linear={w: r["linear"] for w, r in probes.items()},
        knn={w: r["knn_top_1"] for w, r in probes.items()},
        curves={w: curve for w, curve in curves.items() if curve},
        teachers=teachers,
    )


def current_records(settings: StudySettings, encoder: str) -> tuple[list[dict], list[Run]]:
    """The recorded runs of the plan whose records are current for the ``encoder`` fingerprint
    (in plan order), and the runs still to do (missing or stale records)."""
    records = read_records(settings)
    done, pending = [], []
    for run in plan(settings, records):
        record = records.get(run.name)
        current = is_current(record, run, inputs_of(run, settings, encoder, records))
        (done if current else pending).append(record if current else run)
    return done, pending


def run_study(settings: StudySettings) -> list[dict]:
    """Run every run whose record is missing or stale (the plan grows as sweeps finish);
    return all records. Before each run the modules it may start from are installed, and its
    own installed module (from an earlier run of its name) is dropped: it exports a new one."""
    encoder = encoder_fingerprint(settings)
    while True:
        _, pending = current_records(settings, encoder)
        selected = [run for run in pending if settings.selects(run.name)]
        if not selected:
            break
        run = selected[0]
        records = read_records(settings)
        install_modules(settings, records)
        shutil.rmtree(module_path(settings, run.name), ignore_errors=True)
        if run.name in records:
            print(
                f"\n{run.name}: its record is stale (width, flags, encoder or teacher changed); "
                "rerunning"
            )
        key = inputs_of(run, settings, encoder, records)
        record = execute(run, settings, key)
        record["inputs"] = key
        write_record(record, settings)
    install_modules(settings, read_records(settings))
    return current_records(settings, encoder)[0]


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(",") if value)


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
    parser.add_argument(
        "--widths",
        default=",".join(f"{w:g}" for w in defaults.widths),
        help="Comma-separated encoder widths whose runs are planned (0.25: the released one).",
    )
    parser.add_argument(
        "--teacher_width",
        type=float,
        default=defaults.teacher_width,
        help="The width whose fine-tunes teach the big-to-small students.",
    )
    parser.add_argument(
        "--big_students",
        default=",".join(f"{w:g}" for w in defaults.big_students),
        help="Comma-separated widths of the big teacher's students (e.g. 0.25,0.125).",
    )
    parser.add_argument("--table", default="", help="Markdown output (default: in record_dir).")
    parser.add_argument("--plot", default="", help="PNG output (default: in record_dir).")
    parser.add_argument(
        "--size_table", default="", help="Markdown by width (default: in record_dir)."
    )
    parser.add_argument(
        "--size_plot", default="", help="PNG of top-1 by encoder size (default: in record_dir)."
    )
    parser.add_argument(
        "--knn_plot",
        default="",
        help="PNG of the pretraining kNN curves by width (default: in record_dir).",
    )
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
        widths=floats(args.widths),
        teacher_width=args.teacher_width,
        big_students=floats(args.big_students),
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
    results = size_results(records, settings, encoder_parameters(settings, settings.widths))
    outputs = {
        "size_table": args.size_table or os.path.join(settings.record_dir, "by_width.md"),
        "size_plot": args.size_plot or os.path.join(settings.record_dir, "by_width.png"),
        "knn_plot": args.knn_plot or os.path.join(settings.record_dir, "knn_by_width.png"),
    }
    by_width = size.markdown(results)
    with open(outputs["size_table"], "w", encoding="utf-8") as handle:
        handle.write(by_width)
    size.plot_accuracy(results, outputs["size_plot"])
    size.plot_knn_curves(results, outputs["knn_plot"])
    print("\n" + table + "\n" + by_width)
    written = ", ".join([table_path, plot_path, *outputs.values()])
    print(f"this invocation: {time.time() - started:.0f} s; wrote {written}")


if __name__ == "__main__":
    main()
