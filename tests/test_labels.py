import json

import pytest
from conftest import BEN_V1_NPZ
from hypothesis import given, settings
from hypothesis import strategies as st

from geodino.archive.labels import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    BEN43_TO_19,
    UnknownLabelError,
    check_labels,
    multi_hot,
    to_ben19,
)


def test_mapping_matches_the_19_class_labels_shipped_with_real_patches():
    labels = json.loads((BEN_V1_NPZ / "labels.json").read_text())
    assert len(labels) == 30
    for name, entry in labels.items():
        assert to_ben19(entry["labels_43"]) == [c for c in BEN19_CLASSES if c in entry["labels_19"]], name


def official_nomenclature() -> dict:
    """The 43 -> 19 mapping and both class orders as bigearthnet-common 2.8.0 (kai-tub, Apache-2.0) copied them from
    TU Berlin's label_indices.json: an independent source of every name, read from its file without importing it."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("bigearthnet_common")
    tree = ast.parse((Path(spec.submodule_search_locations[0]) / "constants.py").read_text())
    values = {node.targets[0].id: node.value for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    return {name: ast.literal_eval(values[name]) for name in ("OLD2NEW_LABELS_DICT", "NEW_LABELS_ORIGINAL_ORDER")}


def test_every_name_order_and_mapping_equals_the_official_label_indices():
    official = official_nomenclature()
    assert BEN43_CLASSES == tuple(official["OLD2NEW_LABELS_DICT"])  # its keys are in the original order
    assert BEN19_CLASSES == official["NEW_LABELS_ORIGINAL_ORDER"]
    assert BEN43_TO_19 == official["OLD2NEW_LABELS_DICT"]


def test_nomenclature_sizes_order_and_dropped_classes():
    assert len(BEN43_CLASSES) == 43 and len(BEN19_CLASSES) == 19
    assert BEN19_CLASSES[4] == "Pastures"  # the seed's printed list lost it
    dropped = {name for name, target in BEN43_TO_19.items() if target is None}
    assert dropped == {
        "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
        "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
        "Bare rock", "Burnt areas", "Intertidal flats",
    }
    assert set(BEN43_TO_19.values()) - {None} == set(BEN19_CLASSES)


def test_unknown_label_is_named():
    with pytest.raises(UnknownLabelError, match=r"^unknown BigEarthNet-43 label 'Moon craters'$"):
        to_ben19(["Pastures", "Moon craters"])


def test_check_labels_keeps_known_labels_in_order_and_names_the_first_unknown_one():
    """The BigEarthNet v2 reader's check: labels come back as a list (from any iterable, e.g. a NumPy array of a
    parquet row), in their own order; the first name outside the classes is named with the nomenclature's size."""
    labels = ("Marine waters", "Urban fabric")
    assert check_labels(iter(labels), BEN19_CLASSES) == list(labels)
    assert check_labels([], BEN19_CLASSES) == []
    with pytest.raises(UnknownLabelError, match=r"^label 'Sea and ocean' is not one of the 19 classes$"):
        check_labels(["Urban fabric", "Sea and ocean", "Moon craters"], BEN19_CLASSES)


@given(st.lists(st.sampled_from(BEN43_CLASSES), max_size=8))
def test_mapping_properties(labels_43):
    labels_19 = to_ben19(labels_43)
    assert len(set(labels_19)) == len(labels_19)
    assert labels_19 == sorted(labels_19, key=BEN19_CLASSES.index)
    assert set(labels_19) == {BEN43_TO_19[n] for n in labels_43} - {None}
    vector = multi_hot(labels_19, BEN19_CLASSES)
    assert vector.sum() == len(labels_19)
    assert [BEN19_CLASSES[i] for i in vector.nonzero()[0]] == labels_19


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_arbitrary_strings_either_map_or_raise_naming_themselves(names):
    try:
        to_ben19(names)
    except UnknownLabelError as error:
        assert any(repr(name) in str(error) for name in names if name not in BEN43_TO_19)
    else:
        assert all(name in BEN43_TO_19 for name in names)


label_values = st.one_of(st.sampled_from(BEN43_CLASSES), st.text(max_size=12), st.integers(), st.none())
label_files = st.one_of(
    st.fixed_dictionaries({"labels": st.one_of(st.lists(label_values, max_size=5), label_values)},
                          optional={"acquisition_date": st.text(max_size=20), "coordinates": st.dictionaries(
                              st.text(max_size=5), st.integers())}),
    st.lists(st.integers(), max_size=3),
    st.text(max_size=30).map(lambda text: {"raw": text}),
)


@given(label_files)
@settings(max_examples=60, deadline=None)
def test_any_label_file_either_parses_or_is_rejected_with_a_reason(tmp_path_factory, content):
    """parse_ben_v1_patch on arbitrary JSON: a row with BEN-19 labels, or a RejectedPatch naming the file."""
    from geodino.archive.ben_v1 import parse_ben_v1_patch
    from geodino.errors import RejectedPatch

    archive = tmp_path_factory.mktemp("labels")
    name = "S2A_MSIL2A_20170613T101031_1_1"
    (archive / name).mkdir()
    (archive / name / f"{name}_labels_metadata.json").write_text(json.dumps(content))
    try:
        row = parse_ben_v1_patch(str(archive), name, bands=(), verify="header")
    except RejectedPatch as reason:
        assert "labels_metadata.json" in str(reason)
    else:
        assert row["name"] == name and set(row["labels"]) <= set(BEN19_CLASSES)
        assert row["labels"] == to_ben19(content["labels"])
