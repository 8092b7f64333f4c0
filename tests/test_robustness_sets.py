"""ImageNet-V2 / Sketch label rules, the ReaL rule, the cue-conflict 16-category table and shape-bias
rule, and the layout errors: each checked against hand computations or model-vs-human's published values."""
import json

import pytest
import torch

from robustness import cue_conflict as cue
from robustness import real_labels, shape_bias, test_sets
from tests.sets_fixtures import write_cue_conflict, write_real, write_v2, write_wnid_folder


def test_v2_label_is_the_folder_number_not_its_sorted_rank(tmp_path):
    root = write_v2(tmp_path / "v2", classes=(2, 10, 999), per_class=2)
    listing = test_sets.list_pass("v2", str(root), {}, None)
    by_folder = {path.split("/")[-2]: label for path, label in listing.samples}
    assert by_folder == {"2": 2, "10": 10, "999": 999}  # sorted order would give "10" → 0, "2" → 1, "999" → 2
    assert listing.classes == [2, 10, 999] and listing.targets is None
    assert test_sets.check_v2(root) == [f"--imagenet-v2 {root} has 3 of the 1000 class folders: scored over all "
                                        "1000 classes"]


def test_sketch_labels_are_imagenet_indices_whatever_the_run_class_map(tmp_path):
    root = write_wnid_folder(tmp_path / "sketch", wnids=("n01443537", "n15075141"))
    run_index = {"ant": 0, "bee": 1}  # a --class-map folder run: Sketch keeps ImageNet's indices
    listing = test_sets.list_pass("imagenet", str(root), run_index, None)
    assert sorted({label for _, label in listing.samples}) == [1, 999]  # goldfish (1), toilet tissue (999)
    assert test_sets.check_sketch(root)[0].startswith("--imagenet-sketch")


@pytest.mark.parametrize("check,folders,message", [
    (test_sets.check_v2, ["n01440764"], "--imagenet-v2 .*n01440764 are not class indices 0..999; expected DIR/<class index"),
    (test_sets.check_v2, ["1000"], "1000 are not class indices"),
    (test_sets.check_v2, ["007"], "007 are not class indices"),
    (test_sets.check_sketch, ["17"], "--imagenet-sketch .*17 are not ImageNet wnids; expected DIR/<wnid>"),
])
def test_wrong_layouts_name_the_flag_and_the_layout(tmp_path, check, folders, message):
    for f in folders:
        (tmp_path / "d" / f).mkdir(parents=True)
    with pytest.raises(ValueError, match=message):
        check(tmp_path / "d")


def test_missing_folder_and_one_level_too_high(tmp_path):
    with pytest.raises(FileNotFoundError, match="--imagenet-v2 folder .* does not exist"):
        test_sets.check_v2(tmp_path / "nothing")
    write_v2(tmp_path / "release" / "imagenetv2-matched-frequency-format-val")
    with pytest.raises(ValueError, match="point --imagenet-v2 at .*imagenetv2-matched-frequency-format-val"):
        test_sets.check_v2(tmp_path / "release")
    (tmp_path / "empty" / "3").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        test_sets.check_v2(tmp_path / "empty")


def test_imagenet_only_sets_need_a_1000_class_head():
    test_sets.check_outputs("v2", "m", 1000)
    test_sets.check_outputs("run", "m", 3)
    for labels, flag in (("v2", "--imagenet-v2"), ("imagenet", "--imagenet-sketch"), ("cue-conflict", "--cue-conflict")):
        with pytest.raises(ValueError, match=f"{flag} needs a 1000-class ImageNet model.*m has 3 outputs"):
            test_sets.check_outputs(labels, "m", 3)


# ReaL -----------------------------------------------------------------------------------------------------------

def test_real_rule_any_label_counts_empty_lists_are_left_out():
    logits = torch.full((4, 10), -5.0)
    logits[0, 3], logits[1, 7], logits[2, 1], logits[3, 4] = 9, 9, 9, 9  # top-1: 3, 7, 1, 4
    logits[1, 2] = 8  # image 1's second class
    rows = torch.tensor([[5, 3], [2, -1], [-1, -1], [0, -1]])  # labels: {5,3}, {2}, none, {0}
    # image 0: top-1 3 ∈ {5,3} → right; image 1: top-1 7 ∉ {2}, but 2 is in its top-5; image 2: unlabelled,
    # left out although its prediction would match nothing; image 3: 0 is in the top-5 (ties at −5: index order).
    top5_3 = logits[3].topk(5).indices.tolist()
    assert real_labels.real_counts(logits, rows).tolist() == [3, 1, 2 + (0 in top5_3)]


def test_real_labels_are_matched_by_val_file_name(tmp_path):
    path = write_real(tmp_path / "real.json", {1: [7], 42: [1, 2], 50000: []})
    labels = real_labels.read_labels(path)
    paths = ["/x/n0/ILSVRC2012_val_00000042.JPEG", "/x/n1/ILSVRC2012_val_00000001.JPEG",
             "/x/n1/ILSVRC2012_val_00050000.JPEG"]
    assert real_labels.targets(paths, labels).tolist() == [[1, 2], [7, -1], [-1, -1]]
    assert real_labels.val_number("ILSVRC2012_val_00000000.JPEG") is None
    with pytest.raises(ValueError, match="--imagenet-real: --data image .*cat.jpg is not an ILSVRC2012 val file"):
        real_labels.targets(["/x/n0/cat.jpg"], labels)


@pytest.mark.parametrize("content,message", [
    ("[[1], [2]]", "2 entries"), ("{\"a\": 1}", "dict"), ("not json", "is not JSON"),
    (json.dumps([[1000]] * 50000), "not all label lists"),
])
def test_a_wrong_real_file_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "real.json").write_text(content)
    with pytest.raises(ValueError, match=f"--imagenet-real .*{message}"):
        real_labels.read_labels(tmp_path / "real.json")
    with pytest.raises(FileNotFoundError, match="--imagenet-real file .* does not exist"):
        real_labels.read_labels(tmp_path / "missing.json")


def test_timm_ships_a_real_file_our_reader_accepts():
    from importlib import resources

    path = resources.files("timm.data") / "_info" / "imagenet_real_labels.json"
    labels = real_labels.read_labels(str(path))
    assert len(labels) == 50000 and sum(not entry for entry in labels) > 0  # some val images have no ReaL label


# cue-conflict and shape bias --------------------------------------------------------------------------------

def test_category_table_matches_model_vs_human():
    """Spot checks against modelvshuman/helper/human_categories.py (``<category>_indices``)."""
    table = cue.CATEGORY_CLASSES
    assert cue.CATEGORIES == tuple(sorted(table)) and len(table) == 16
    assert table["airplane"] == (404,) and table["knife"] == (499,) and table["oven"] == (766,)
    assert table["bear"] == (294, 295, 296, 297) and table["cat"] == (281, 282, 283, 284, 285, 286)
    assert table["truck"] == (555, 569, 656, 675, 717, 734, 864, 867)
    assert table["bottle"] == (440, 720, 737, 898, 899, 901, 907) and table["boat"] == (472, 554, 625, 814, 914)
    assert (table["bird"][0], table["bird"][-1], len(table["bird"])) == (8, 145, 49)
    assert (table["dog"][0], table["dog"][-1], len(table["dog"])) == (152, 268, 109)
    assert {192, 204, 227, 242, 251, 258, 260, 264}.isdisjoint(table["dog"]) and 9 not in table["bird"]
    everything = [c for classes in table.values() for c in classes]
    assert len(everything) == len(set(everything)) == 207


def _probabilities() -> torch.Tensor:
    """One image whose 16-way decision is knife by the mean, bird by the max and dog by the sum."""
    p = torch.zeros(1000)
    p[499] = 0.05  # knife: 1 class → mean 0.05
    p[list(cue.CATEGORY_CLASSES["dog"])] = 0.007  # dog: 109 classes → sum 0.763, mean 0.007
    p[8] = 0.1  # bird: one of 49 classes → max 0.1, mean 0.00204
    p[0] = 1 - p.sum()  # tench: in no category
    return p


def test_decision_is_the_mean_probability_of_the_category_classes():
    p = _probabilities()
    means = shape_bias.category_probabilities(p[None])[0]
    assert means[cue.CATEGORIES.index("knife")] == pytest.approx(0.05)
    assert means[cue.CATEGORIES.index("dog")] == pytest.approx(0.007)
    assert means[cue.CATEGORIES.index("bird")] == pytest.approx(0.1 / 49)
    assert means[cue.CATEGORIES.index("airplane")] == 0
    logits = p.log()[None]  # softmax(log p) = p
    assert cue.CATEGORIES[shape_bias.decisions(logits).item()] == "knife"  # max → bird, sum → dog


def test_shape_bias_counts_and_the_no_conflict_exclusion():
    cat, dog, knife, oven = (cue.CATEGORIES.index(c) for c in ("cat", "dog", "knife", "oven"))
    decide = [knife, knife, oven, dog, cat, cat]
    logits = torch.full((6, 1000), -10.0)
    for i, c in enumerate(decide):
        logits[i, cue.CATEGORY_CLASSES[cue.CATEGORIES[c]][0]] = 10.0
    shape = torch.tensor([knife, oven, knife, knife, cat, cat])
    texture = torch.tensor([oven, knife, oven, oven, cat, dog])
    # image 0: shape decision; 1: texture; 2: texture; 3: neither; 4: shape = texture = decision → excluded;
    # 5: shape decision. n counts all six.
    assert shape_bias.decision_counts(logits, shape, texture).tolist() == [6, 2, 2]
    assert shape_bias.summary(6, 2, 2) == {"shape_bias": 50.0, "shape_fraction": pytest.approx(100 / 3),
                                           "texture_fraction": pytest.approx(100 / 3)}
    assert shape_bias.summary(10, 3, 1)["shape_bias"] == 75.0 and shape_bias.summary(10, 0, 0)["shape_bias"] is None


def test_stimuli_layout_and_file_names(tmp_path):
    root = write_cue_conflict(tmp_path / "cue", size=24)
    samples, textures = cue.stimuli(root)
    names = {path.split("/")[-1]: (cue.CATEGORIES[s], cue.CATEGORIES[t]) for (path, s), t in zip(samples, textures)}
    assert names["airplane1-bicycle2.png"] == ("airplane", "bicycle") and names["cat2-cat2.png"] == ("cat", "cat")
    assert cue.texture_category("x/oven/XXX_oven3-dog10.png") == "dog"  # model-vs-human's prefixed names
    with pytest.raises(ValueError, match="--cue-conflict: .*airplane1-bicycle2.png is 24x24; the stimuli are 224x224"):
        cue.check_stimuli(root)


@pytest.mark.parametrize("folder,name,message", [
    ("plane", "plane1-cat1.png", "found folder\\(s\\) \\['plane'\\]; expected the 16 category folders"),
    ("cat", "cat1-zebra1.png", "is not named <shape><n>-<texture><m>.png"),
    ("cat", "dog1-cat1.png", "names shape 'dog' but lies in folder 'cat'"),
])
def test_bad_cue_conflict_layouts(tmp_path, folder, name, message):
    write_cue_conflict(tmp_path / "cue", {folder: [name]})
    with pytest.raises(ValueError, match=message):
        cue.check_stimuli(tmp_path / "cue")
    with pytest.raises(FileNotFoundError, match="--cue-conflict folder .* does not exist"):
        cue.stimuli(tmp_path / "nothing")

