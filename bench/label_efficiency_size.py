"""The label-efficiency study by encoder size (issue 26, "Size matters"): SimCLRv2 section 3 and
Figure 1 (bigger self-supervised models gain more from fine-tuning on few labels) and section
2.3 with Table 3 (a big fine-tuned teacher distils into a better small student).

This module only reports: :func:`markdown` (the table by width, the distillation comparison at
the student's size and the targets, each met, missed or pending), :func:`plot_accuracy`
(top-1 against encoder parameters, one line per label fraction) and :func:`plot_knn_curves`
(the pretraining kNN monitor, one line per width). ``bench/label_efficiency.py`` gathers
:class:`SizeResults` from its records; nothing here runs or reads a run.

Seeds pair the two sides of a comparison: a seed picks the same labeled subset at every width
and for every method, so a gain (fine-tuned minus supervised) and a lift (width 0.5 minus width
0.125) are taken seed by seed, then summarised as mean ± sample standard deviation [min, max].
"""

from __future__ import annotations

import dataclasses

import numpy as np

SMALLEST_WIDTH = 0.125  # the ends of the ladder the targets compare
LARGEST_WIDTH = 0.5
LINEAR_TARGET = 0.88  # linear evaluation at 100% of the labels, width 0.5
FINETUNE_MARGIN = 0.03  # 1% fine-tuning over supervised 1%, width 0.5
PROBE_FRACTIONS = ("0.01", "0.1", "1")
FINETUNE_FRACTIONS = (0.01, 0.1)

Key = tuple[str, float, float]  # (method, label fraction, width of the trained network)


@dataclasses.dataclass(frozen=True)
class SizeResults:
    """What the report by size reads. ``top_1``: the test top-1 by seed of every finished
    (method, fraction, width) group (a budget sweep counts once finished, by its best budget);
    ``linear`` and ``knn``: the fixed-feature probes of each width's encoder; ``curves``: each
    width's pretraining kNN curve (``[{"epoch", "knn_top_1"}]``); ``teachers``: the big
    teacher's name and top-1 by fraction; ``base_width``: the recipes' width, the only one with
    supervised baselines at 10% and 100% of the labels."""

    seeds: tuple[int, ...]
    widths: tuple[float, ...]
    base_width: float
    teacher_width: float
    students: tuple[float, ...]
    parameters: dict[float, int]
    top_1: dict[Key, dict[int, float]]
    linear: dict[float, dict[str, float]]
    knn: dict[float, float]
    curves: dict[float, list[dict]]
    teachers: dict[float, tuple[str, float]]

    def complete(self, method: str, fraction: float, width: float) -> dict[int, float] | None:
        """The group's top-1 by seed when every seed of the study is recorded, else None."""
        values = self.top_1.get((method, fraction, width))
        if values is None or not set(self.seeds) <= set(values):
            return None
        return {seed: values[seed] for seed in self.seeds}


def describe(values: list[float]) -> dict:
    """Mean, sample standard deviation (ddof=1; 0 for one value), min, max and count."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "count": len(array),
    }


def shown(values: list[float], signed: bool = False) -> str:
    """``mean ± std [min, max]`` of ``values``."""
    entry = describe(values)
    number = "{:+.4f}" if signed else "{:.4f}"
    spread = f" ± {entry['std']:.4f}" if entry["count"] > 1 else ""
    bounds = f" [{number.format(entry['min'])}, {number.format(entry['max'])}]"
    return number.format(entry["mean"]) + spread + (bounds if entry["count"] > 1 else "")


def paired(first: dict[int, float], second: dict[int, float]) -> list[float]:
    """``first - second`` seed by seed (the same labeled subset on both sides)."""
    return [first[seed] - second[seed] for seed in sorted(first)]


def gain(results: SizeResults, fraction: float, width: float) -> list[float] | None:
    """Fine-tuned minus supervised on the same subsets at ``width``, by seed (SimCLRv2 Figure
    1's quantity), or None while either side is incomplete."""
    tuned = results.complete("finetune", fraction, width)
    base = results.complete("supervised", fraction, width)
    return paired(tuned, base) if tuned and base else None


def lift(results: SizeResults, fraction: float) -> list[float] | None:
    """Fine-tuning at the largest width minus at the smallest, by seed, or None."""
    big = results.complete("finetune", fraction, LARGEST_WIDTH)
    small = results.complete("finetune", fraction, SMALLEST_WIDTH)
    return paired(big, small) if big and small else None


Target = tuple[str, str, str]  # (target, "met" / "missed" / "pending", measured)


def targets(results: SizeResults) -> list[Target]:
    """Issue 26's targets (a)-(f): met or missed on complete records (every seed, finished
    sweeps), pending otherwise; never met on missing data."""
    small, big, student = SMALLEST_WIDTH, LARGEST_WIDTH, results.base_width
    rows: list[Target] = []

    def add(text: str, met: bool | None, evidence: str) -> None:
        status = "pending" if met is None else "met" if met else "missed"
        rows.append((text, status, evidence if met is not None else "records missing"))

    def top_1(method: str, fraction: float, width: float) -> list[float] | None:
        values = results.complete(method, fraction, width)
        return list(values.values()) if values else None

    wide, narrow = gain(results, 0.01, big), gain(results, 0.01, small)
    known = wide is not None and narrow is not None
    add(
        f"(a) the 1% gain of fine-tuning over supervised grows with width: width {big:g}'s "
        f"larger than width {small:g}'s, no overlap",
        min(wide) > max(narrow) if known else None,
        f"gain at width {big:g}: {shown(wide, True)}; at width {small:g}: "
        f"{shown(narrow, True)}; difference {np.mean(wide) - np.mean(narrow):+.4f}"
        if known
        else "",
    )

    one, ten = lift(results, 0.01), lift(results, 0.1)
    known = one is not None and ten is not None
    add(
        f"(b) width {small:g} -> {big:g} lifts 1% fine-tuning more than 10% fine-tuning",
        float(np.mean(one)) > float(np.mean(ten)) if known else None,
        f"lift at 1%: {shown(one, True)}; at 10%: {shown(ten, True)}; "
        f"difference {np.mean(one) - np.mean(ten):+.4f}"
        if known
        else "",
    )

    linear = results.linear.get(big, {}).get("1")
    add(
        f"(c) linear evaluation at 100% >= {LINEAR_TARGET:g} for the width-{big:g} encoder",
        linear >= LINEAR_TARGET if linear is not None else None,
        f"{linear:.4f} (gap {linear - LINEAR_TARGET:+.4f})" if linear is not None else "",
    )

    tuned, base = top_1("finetune", 0.01, big), top_1("supervised", 0.01, big)
    known = tuned is not None and base is not None
    margin = float(np.mean(tuned) - np.mean(base)) if known else 0.0
    add(
        f"(d) 1% fine-tuning beats converged supervised 1% by >= {FINETUNE_MARGIN * 100:g} "
        f"points, no overlap, at width {big:g}",
        margin >= FINETUNE_MARGIN and min(tuned) > max(base) if known else None,
        f"{shown(tuned)} vs {shown(base)} (gain {margin:+.4f}, "
        f"{margin - FINETUNE_MARGIN:+.4f} from the target)"
        if known
        else "",
    )

    beats, evidence = [], []
    for fraction in FINETUNE_FRACTIONS:
        distilled = top_1("big_to_small", fraction, student)
        selfd = top_1("self_distill", fraction, student)
        if distilled is not None and selfd is not None:
            beats.append(min(distilled) > max(selfd))
            evidence.append(
                f"{fraction:.0%}: {shown(distilled)} vs {shown(selfd)} "
                f"({np.mean(distilled) - np.mean(selfd):+.4f})"
            )
    known = len(beats) == len(FINETUNE_FRACTIONS)
    add(
        f"(e) the width-{student:g} student of the width-{results.teacher_width:g} teacher "
        f"beats the width-{student:g} self-distilled student, no overlap at 1% and at 10%",
        all(beats) if known else None,
        "; ".join(evidence),
    )

    distilled, full = top_1("big_to_small", 0.1, student), top_1("supervised", 1.0, student)
    known = distilled is not None and full is not None
    reach = float(np.mean(distilled) - np.mean(full)) if known else 0.0
    add(
        "(f) moonshot: 10% labels + big-to-small distillation reach supervised training of "
        f"width {student:g} on all labels",
        reach >= 0 if known else None,
        f"{shown(distilled)} vs {shown(full)} (gap {reach:+.4f})" if known else "",
    )
    return rows


def cell(values: dict[int, float] | list[float] | None, signed: bool = False) -> str:
    if values is None:
        return "pending"
    return shown(list(values.values()) if isinstance(values, dict) else values, signed)


def width_table(results: SizeResults) -> list[str]:
    """One row per width: encoder parameters, the encoder's probes, fine-tuned and supervised
    top-1 and the gain of fine-tuning (paired by seed). Supervised 10% runs at the base width
    only ("-" elsewhere)."""
    lines = [
        "| width | encoder parameters | kNN | linear 1% | linear 10% | linear 100% "
        "| fine-tuned 1% | supervised 1% | gain 1% | fine-tuned 10% | supervised 10% "
        "| gain 10% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for width in results.widths:
        linear = results.linear.get(width)
        probes = [f"{results.knn[width]:.4f}" if width in results.knn else "pending"]
        probes += [f"{linear[f]:.4f}" if linear else "pending" for f in PROBE_FRACTIONS]
        cells = [f"{results.parameters[width]:,}", *probes]
        for fraction in FINETUNE_FRACTIONS:
            measured = fraction == 0.01 or width == results.base_width
            cells.append(cell(results.complete("finetune", fraction, width)))
            if measured:
                cells.append(cell(results.complete("supervised", fraction, width)))
                cells.append(cell(gain(results, fraction, width), signed=True))
            else:
                cells += ["-", "-"]
        lines.append(f"| {width:g} | " + " | ".join(cells) + " |")
    return lines


def distillation_table(results: SizeResults) -> list[str]:
    """At each student size and label fraction: the student fine-tuned directly, self-distilled
    (a teacher of its own size; measured at the base width) and distilled from the big teacher
    (SimCLRv2 Table 3)."""
    big = results.teacher_width
    lines = [
        f"| student width | labels | fine-tuned directly | self-distilled | distilled from width "
        f"{big:g} | teacher (width {big:g}, seed {results.seeds[0]}) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for student in results.students:
        for fraction in FINETUNE_FRACTIONS:
            teacher = results.teachers.get(fraction)
            selfd = (
                cell(results.complete("self_distill", fraction, student))
                if student == results.base_width
                else "-"
            )
            lines.append(
                f"| {student:g} | {fraction:.0%} | "
                f"{cell(results.complete('finetune', fraction, student))} | {selfd} | "
                f"{cell(results.complete('big_to_small', fraction, student))} | "
                + (f"{teacher[1]:.4f} ({teacher[0]})" if teacher else "pending")
                + " |"
            )
    return lines


def markdown(results: SizeResults) -> str:
    """The tables by width and at the student's size, and the targets, as Markdown."""
    lines = ["Label efficiency by encoder width (ResNet-18, CIFAR stem, 28 px):", ""]
    lines += width_table(results)
    lines += ["", "Big-to-small distillation (labels mixed in):", ""]
    lines += distillation_table(results)
    lines += ["", "| target | status | measured |", "|---|---|---|"]
    for text, status, evidence in targets(results):
        shown_status = status if status == "pending" else f"**{status}**"
        lines.append(f"| {text} | {shown_status} | {evidence} |")
    seeds = ", ".join(map(str, results.seeds))
    lines += [
        "",
        f"Cells: top-1 on the test images over seeds {seeds}, mean ± sample standard deviation "
        "[min, max]; gains and lifts are taken seed by seed (same labeled subset); a budget "
        "sweep counts once finished, at its best budget; pending: a record or a seed is "
        "missing. Encoder parameters: the ResNet without projection or supervised head.",
    ]
    return "\n".join(lines) + "\n"


def plot_accuracy(results: SizeResults, path: str) -> None:
    """Top-1 against encoder parameters (log axis), one line per label fraction: fine-tuned
    (solid) next to supervised on the same labels (dashed), with the seed spread as bars, and
    the linear probes of the encoders in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (tuned_axes, probe_axes) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    colours = {0.01: "tab:blue", 0.1: "tab:orange", 1.0: "tab:green"}
    for fraction, colour in colours.items():
        for method, style in (("finetune", "-"), ("supervised", "--")):
            points = [
                (results.parameters[w], list(values.values()))
                for w in results.widths
                if (values := results.complete(method, fraction, w))
            ]
            if points:
                label = "SimCLRv2 fine-tuned" if method == "finetune" else "supervised only"
                tuned_axes.errorbar(
                    [x for x, _ in points],
                    [np.mean(v) for _, v in points],
                    yerr=[describe(v)["std"] for _, v in points],
                    color=colour,
                    linestyle=style,
                    marker="o" if method == "finetune" else "s",
                    capsize=3,
                    label=f"{label}, {fraction:.0%} labels",
                )
        probes = [
            (results.parameters[w], results.linear[w][f"{fraction:g}"])
            for w in results.widths
            if w in results.linear
        ]
        if probes:
            probe_axes.plot(
                [x for x, _ in probes],
                [y for _, y in probes],
                color=colour,
                marker="o",
                label=f"linear probe, {fraction:.0%} labels",
            )
    for axes, title in (
        (tuned_axes, "fine-tuned vs supervised on the same labels"),
        (probe_axes, "converged linear probe of the frozen encoder"),
    ):
        axes.set_xscale("log")
        axes.set_xticks(
            [results.parameters[w] for w in results.widths],
            labels=[f"{results.parameters[w]:,}\n(width {w:g})" for w in results.widths],
        )
        axes.minorticks_off()
        axes.set_xlabel("encoder parameters")
        axes.set_ylabel("top-1 accuracy (test images)")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:  # nothing recorded yet: no legend
            axes.legend(fontsize=7, loc="lower right")
    figure.suptitle("Fashion-MNIST, ResNet-18: label efficiency by encoder size")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_knn_curves(results: SizeResults, path: str) -> None:
    """The pretraining kNN monitor against epochs, one line per width."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for width in results.widths:
        curve = results.curves.get(width)
        if curve:
            axes.plot(
                [point["epoch"] for point in curve],
                [point["knn_top_1"] for point in curve],
                marker=".",
                label=f"width {width:g} ({results.parameters[width]:,} encoder parameters)",
            )
    axes.set_xlabel("pretraining epoch")
    axes.set_ylabel("weighted kNN top-1 (k=200, t=0.1)")
    axes.set_title("SimCLRv2 pretraining on Fashion-MNIST by width: kNN monitor")
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
