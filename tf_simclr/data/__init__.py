"""Data for SimCLRv2: image sources, label subsets, augmentations and input pipelines.

``load_source`` gives ``(dataset, info)`` for a ``--dataset`` string; ``label_subset`` picks the
labeled examples of a semi-supervised run; ``build_distributed_dataset`` / ``build_dataset`` turn a
source into the batches of a phase (see :mod:`tf_simclr.data.pipeline` for the element contract).
"""

from tf_simclr.data.augment import Augmenter
from tf_simclr.data.pipeline import (
    PHASES,
    build_dataset,
    build_distributed_dataset,
    combine_streams,
    mark_unlabeled,
    mix_evenly,
)
from tf_simclr.data.source_types import Source, SourceInfo
from tf_simclr.data.sources import (
    SOURCE_FORMS,
    load_source,
    open_source,
    validate_dataset_name,
)
from tf_simclr.data.subsets import (
    LabelSubset,
    label_subset,
    read_subset_file,
    select_subset,
    write_label_subset,
    write_subset_file,
)

__all__ = [
    "PHASES",
    "SOURCE_FORMS",
    "Augmenter",
    "LabelSubset",
    "Source",
    "SourceInfo",
    "build_dataset",
    "build_distributed_dataset",
    "combine_streams",
    "label_subset",
    "load_source",
    "mark_unlabeled",
    "mix_evenly",
    "open_source",
    "read_subset_file",
    "select_subset",
    "validate_dataset_name",
    "write_label_subset",
    "write_subset_file",
]
