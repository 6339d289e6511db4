"""Turn a checkpoint of google-research/simclr into a :class:`tf_simclr.SimCLRModel`.

The architecture comes from the checkpoint itself (:mod:`tf_simclr.reference.layout`): depth,
width, selective kernels, stem, the projection head's layers (a truncated head too) and output
width, the number of classes. The converted model sets the options that make tf-simclr compute
exactly what the reference computes: ``initial_conv_before_bn``, ``reference_resnet_d``
(batch-norm epsilon 1e-5 is tf-simclr's already).

One thing the shapes cannot tell: which head output feeds the supervised head (SimCLRv2
section 2 fine-tunes from the middle of the projection head). For ResNet-50 1x ``proj_head_1``
and the encoder output are both 2048 wide. The reference's 1% and 10% fine-tunes read
``proj_head_1`` (``ft_proj_selector=1``), its 100% fine-tunes, supervised models and linear
heads the encoder output (0). The released folders say which: ``finetuned_1pct``,
``finetuned_10pct`` (1), ``finetuned_100pct``, ``supervised`` (0). Otherwise the caller must
choose; it is never guessed, since a wrong guess gives near-chance accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from tf_simclr import hub
from tf_simclr.config import ModelConfig
from tf_simclr.models.simclr import SimCLRModel
from tf_simclr.reference import layout, storage

logger = logging.getLogger("tf_simclr")

FOLDER_SELECTORS = {
    "finetuned_1pct": 1,
    "finetuned_10pct": 1,
    "finetuned_100pct": 0,
    "supervised": 0,
}


def folder_selector(path: str) -> tuple[str, int] | None:
    """``(folder, ft_proj_selector)`` for the innermost released folder name in ``path``."""
    for folder in reversed(path.replace("\\", "/").split("/")):
        if folder in FOLDER_SELECTORS:
            return folder, FOLDER_SELECTORS[folder]
    return None


def _output_name(index: int) -> str:
    return "proj_head_input" if index == 0 else f"proj_head_{index}"


@dataclasses.dataclass(frozen=True)
class ReferenceCheckpoint:
    """A checkpoint of the reference implementation and the network read from it.

    ``config`` is the encoder and projection head (no supervised head); ``num_classes`` and
    ``supervised_input`` describe the supervised head (0 without one); ``selector_choices`` are
    the ``ft_proj_selector`` values whose head output is as wide as the supervised head's input.
    ``keys`` maps each part's variables (our object paths) to checkpoint keys; ``skipped``
    counts the variables deliberately not read, by reason.
    """

    location: storage.Location
    config: ModelConfig
    num_classes: int
    supervised_input: int
    selector_choices: tuple[int, ...]
    keys: Mapping[str, Mapping[str, str]]
    skipped: Mapping[str, int]
    step: int | None
    store: storage.VariableStore = dataclasses.field(repr=False, compare=False)

    @property
    def path(self) -> str:
        return self.location.path

    def ft_proj_selector(self, explicit: int | None = None) -> int:
        """The head output feeding the supervised head: ``explicit`` when given (it must be as
        wide as the head's input), the only output that is, or the folder name's choice."""
        count = self.config.num_head_layers + 1
        names = [_output_name(i) for i in self.selector_choices]
        if explicit is not None:
            if not -count <= explicit < count or explicit % count not in self.selector_choices:
                raise ValueError(
                    f"ft_proj_selector={explicit} does not fit {self.path}: its supervised head "
                    f"reads a {self.supervised_input}-wide input, which is "
                    f"{' or '.join(names)} (ft_proj_selector "
                    f"{' or '.join(map(str, self.selector_choices))})."
                )
            return explicit
        if len(self.selector_choices) == 1:
            return self.selector_choices[0]
        folder = folder_selector(self.path)
        if folder is not None and folder[1] in self.selector_choices:
            logger.info(
                "%s: the supervised head reads %s (ft_proj_selector=%d, folder %s)",
                self.path,
                _output_name(folder[1]),
                folder[1],
                folder[0],
            )
            return folder[1]
        raise ValueError(
            f"{self.path} has a supervised head ({self.num_classes} classes) reading a "
            f"{self.supervised_input}-wide input, and {', '.join(names)} are all that wide: "
            "which one feeds it cannot be read from the checkpoint, and a wrong guess gives "
            "near-chance accuracy. Choose with ft_proj_selector: 1 (proj_head_1) for the "
            "reference's 1% and 10% fine-tunes, 0 (the encoder output) for its 100% fine-tunes, "
            "supervised models and linear heads (tf-simclr-export --ft_proj_selector=N "
            "--export_dir=DIR converts it; pass DIR where a module is wanted, e.g. --teacher). "
            "A folder finetuned_1pct, finetuned_10pct, finetuned_100pct or supervised in the "
            "path settles it; or leave the supervised head out (--noinclude_supervised_head)."
        )

    def model_config(
        self, include_supervised_head: bool = True, ft_proj_selector: int | None = None
    ) -> ModelConfig:
        """The architecture to build: with the supervised head when asked and present."""
        if include_supervised_head and not self.num_classes and ft_proj_selector is not None:
            raise ValueError(
                f"{self.path} has no supervised head for ft_proj_selector={ft_proj_selector} to "
                "feed; leave ft_proj_selector out."
            )
        if not include_supervised_head or not self.num_classes:
            return self.config
        return dataclasses.replace(
            self.config,
            num_classes=self.num_classes,
            ft_proj_selector=self.ft_proj_selector(ft_proj_selector),
        )


def read_reference_checkpoint(path: str, use_ema: bool = False) -> ReferenceCheckpoint:
    """Find the reference checkpoint at ``path`` (any of the three formats, see
    :func:`tf_simclr.reference.storage.locate`) and read its architecture.

    ``use_ema`` reads the ``ema_model/`` copy of a TF1 checkpoint. Raises ``ValueError`` naming
    what was found when ``path`` holds no reference checkpoint, and listing the variables when
    the checkpoint holds any that are neither a weight of the network nor skipped on purpose
    (optimizer slots and state, step counters, the memory of negatives, the unread EMA copy).
    """
    location = storage.locate(path)
    if location is None:
        raise ValueError(
            f"{path} is not a checkpoint of the reference implementation (a TF2 training "
            f"checkpoint, a TF2 SavedModel or a TF1 checkpoint): {storage.describe(path)}."
        )
    store = storage.open_store(location, use_ema)
    where = f"{path} ({location.format})"
    if store.unknown:
        raise ValueError(
            f"{where} holds {len(store.unknown)} variables that are no weight of a SimCLRv2 "
            f"network the reference builds: {', '.join(store.unknown[: storage.MAX_LISTED])}"
        )
    try:
        fmt, key, shape = store.layout, store.key, store.shape
        encoder, encoder_keys = layout.infer_encoder(fmt, key, shape, store.part_keys["encoder"])
        config, head_keys = layout.infer_head(
            fmt, key, shape, store.part_keys["projection_head"], encoder
        )
        num_classes, width, supervised_keys = layout.infer_supervised(
            fmt, key, shape, store.part_keys["supervised_head"]
        )
    except ValueError as error:
        raise ValueError(f"{where}: {error}.") from error
    widths = layout.head_output_dims(config)
    choices = tuple(i for i, output in enumerate(widths) if output == width)
    if num_classes and not choices:
        raise ValueError(
            f"{where}: the supervised head reads a {width}-wide input but the head outputs are "
            f"{widths} wide."
        )
    checkpoint = ReferenceCheckpoint(
        location=location,
        config=config,
        num_classes=num_classes,
        supervised_input=width,
        selector_choices=choices,
        keys={
            "encoder": encoder_keys,
            "projection_head": head_keys,
            "supervised_head": supervised_keys,
        },
        skipped={reason: len(keys) for reason, keys in store.skipped.items()},
        step=store.step,
        store=store,
    )
    logger.info(
        "Read %s: ResNet-%d %gx sk_ratio=%g, %s head of %d layers, %d classes; not read: %s",
        where,
        config.resnet_depth,
        config.width_multiplier,
        config.sk_ratio,
        config.proj_head_mode,
        config.num_head_layers,
        num_classes,
        ", ".join(f"{count} {reason}" for reason, count in checkpoint.skipped.items()) or "none",
    )
    return checkpoint


def restore_reference_weights(
    model: SimCLRModel, checkpoint: ReferenceCheckpoint, parts: Iterable[str]
) -> None:
    """Assign the checkpoint's weights of ``parts`` to the built ``model`` (under any strategy),
    every variable of those parts and nothing else; its architecture must be the checkpoint's
    (see :func:`tf_simclr.checkpoints.restore_weights`, which checks it first)."""
    targets = hub.variable_paths(model, parts)
    keys = {path: key for part in parts for path, key in checkpoint.keys[part].items()}
    if keys.keys() != targets.keys():
        difference = sorted(keys.keys() ^ targets.keys())
        raise ValueError(
            f"the model's {', '.join(parts)} and {checkpoint.path} differ in "
            f"{len(difference)} variables ({', '.join(difference[: storage.MAX_LISTED])}); "
            "build the model from the checkpoint's architecture."
        )
    for path, variable in targets.items():
        variable.assign(checkpoint.store.read(keys[path]))


def load_reference_model(
    path: str,
    *,
    ft_proj_selector: int | None = None,
    use_ema: bool = False,
    include_supervised_head: bool = True,
) -> tuple[SimCLRModel, ReferenceCheckpoint]:
    """``(model, checkpoint)``: a SimCLRModel (plain batch norm, float32) holding the reference
    checkpoint at ``path``, with its supervised head unless ``include_supervised_head`` is False
    (see :meth:`ReferenceCheckpoint.ft_proj_selector` for ``ft_proj_selector``), and what
    :func:`read_reference_checkpoint` read from it."""
    checkpoint = read_reference_checkpoint(path, use_ema)
    config = checkpoint.model_config(include_supervised_head, ft_proj_selector)
    model = SimCLRModel(config).build_for_size()
    restore_reference_weights(model, checkpoint, hub.model_parts(model))
    return model, checkpoint
