"""Label subsets (SimCLRv2 section 4): stratified, nested, deterministic, round-trip via file."""

import os

import numpy as np
import pytest

from tf_simclr.config import DataConfig
from tf_simclr.data import label_subset, load_source, read_subset_file, select_subset
from tf_simclr.data.subsets import SUBSET_FILE_NAME, resolve_keys, write_subset_file


@pytest.fixture
def labels():
    """10 balanced classes of 300 in shuffled order, plus an imbalanced 3-class split."""
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), 300)), rng.permutation(
        np.repeat(np.arange(3), [500, 200, 100])
    )


def test_subsets_are_class_stratified(labels):
    balanced, imbalanced = labels
    for fraction in (0.01, 0.1):
        chosen = select_subset(balanced, label_fraction=fraction, seed=1)
        np.testing.assert_array_equal(np.bincount(balanced[chosen]), [round(300 * fraction)] * 10)
    chosen = select_subset(imbalanced, label_fraction=0.1, seed=1)
    np.testing.assert_array_equal(np.bincount(imbalanced[chosen]), [50, 20, 10])
    chosen = select_subset(imbalanced, labels_per_class=7, seed=1)
    np.testing.assert_array_equal(np.bincount(imbalanced[chosen]), [7, 7, 7])
    assert len(np.unique(chosen)) == len(chosen) and np.all(np.diff(chosen) > 0)


def test_subsets_are_nested_and_deterministic(labels):
    balanced, _ = labels
    for seed in (0, 1, 2):
        small = select_subset(balanced, label_fraction=0.01, seed=seed)
        large = select_subset(balanced, label_fraction=0.1, seed=seed)
        assert set(small) <= set(large)
        assert set(select_subset(balanced, labels_per_class=2, seed=seed)) <= set(
            select_subset(balanced, labels_per_class=5, seed=seed)
        )
        np.testing.assert_array_equal(
            small, select_subset(balanced, label_fraction=0.01, seed=seed)
        )
    assert not np.array_equal(
        select_subset(balanced, label_fraction=0.1, seed=0),
        select_subset(balanced, label_fraction=0.1, seed=1),
    )


def test_a_subset_without_some_class_is_an_error(labels):
    _, imbalanced = labels
    with pytest.raises(ValueError, match="class 2 has 100 example"):
        select_subset(imbalanced, label_fraction=0.004)
    with pytest.raises(ValueError, match=r"class 2 has 100 .*labels_per_class <= 100"):
        select_subset(imbalanced, labels_per_class=150)
    with pytest.raises(ValueError, match="class 3 has 0"):
        select_subset(imbalanced, label_fraction=0.5, num_classes=4)
    with pytest.raises(ValueError, match="exactly one"):
        select_subset(imbalanced, label_fraction=0.1, labels_per_class=3)
    with pytest.raises(ValueError, match="no label"):
        select_subset(np.array([0, 1, -1]), labels_per_class=1)


def test_subset_files_round_trip_and_match_reference_style_names(tmp_path):
    keys = [f"n0{c}/n0{c}_{i}.JPEG" for c in range(3) for i in range(4)]
    path = str(tmp_path / "subset.txt")
    write_subset_file(path, [keys[1], keys[6]], header="two examples\nseed=0")
    assert read_subset_file(path) == [keys[1], keys[6]]
    np.testing.assert_array_equal(resolve_keys(keys, read_subset_file(path)), [1, 6])
    (tmp_path / "1percent.txt").write_text("n01_2.JPEG\nn00_0.JPEG\n\n")
    np.testing.assert_array_equal(
        resolve_keys(keys, read_subset_file(str(tmp_path / "1percent.txt"))), [0, 6]
    )
    with pytest.raises(ValueError, match="not in the split"):
        resolve_keys(keys, ["n09_1.JPEG"])


def test_label_subset_writes_the_file_and_reads_it_back(tmp_path):
    name = "synthetic:size=8,count=200,classes=4"
    dataset, info = load_source(name, split="train")
    config = DataConfig(dataset=name, label_fraction=0.1, seed=3)
    subset = label_subset(dataset, info, config, str(tmp_path))
    assert subset.num_labeled == 20 and subset.path == os.path.join(tmp_path, SUBSET_FILE_NAME)
    labeled = list(subset.labeled.as_numpy_iterator())
    assert len(labeled) == 20
    np.testing.assert_array_equal(np.bincount([label for _, label in labeled]), [5] * 4)
    everything = list(dataset.as_numpy_iterator())
    for (image, label), position in zip(labeled, subset.positions, strict=True):
        np.testing.assert_array_equal(image, everything[position][0])
        assert label == everything[position][1]

    masked = list(subset.with_label_mask.as_numpy_iterator())
    assert len(masked) == 200
    flags = np.array([has_label for _, _, has_label in masked])
    np.testing.assert_array_equal(np.flatnonzero(flags), subset.positions)
    assert all(label == -1 for _, label, has_label in masked if not has_label)

    again = label_subset(
        dataset, info, DataConfig(dataset=name, labels_subset_file=subset.path), None
    )
    np.testing.assert_array_equal(again.positions, subset.positions)
    full = label_subset(dataset, info, DataConfig(dataset=name), None)
    assert full.num_labeled == 200 and full.positions is None
