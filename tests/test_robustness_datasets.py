"""Datasets: layouts, class maps, 200-class masks, eval transform vs timm's, clear errors, bad images."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo
from timm.data.transforms_factory import transforms_imagenet_eval

from common.distributed import ShardSampler
from classification import data as cdata
from robustness import datasets as ds
from robustness.geometry import model_view

WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_folder(root, names=WNIDS, per_class=3, size=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"img{i}.JPEG")
    return root


def test_imagenet_class_indices_from_timm(tmp_path):
    root = write_folder(tmp_path / "val", names=["n01443537", "n15075141"])  # ImageNet indices 1 and 999
    idx = cdata.build_class_index("imagenet", root)
    names = ImageNetInfo().label_names()
    assert idx["n01443537"] == names.index("n01443537") == 1 and idx["n15075141"] == 999
    data = cdata.ImageFolderSet(root, idx, 32, 0.875)
    assert len(data) == 6 and data.classes == [1, 999]
    assert sorted({label for _, label in data.samples}) == [1, 999]


def test_folder_class_map_and_unknown_wnid_error(tmp_path):
    root = write_folder(tmp_path / "val", names=["cat", "ant", "dog"])
    idx = cdata.build_class_index("folder", root)
    assert idx == {"ant": 0, "cat": 1, "dog": 2}
    with pytest.raises(ValueError, match="class_map=.folder."):
        cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 32, 0.875)
    with pytest.raises(ValueError, match="class_map"):
        cdata.build_class_index("cifar", root)


def test_transform_matches_timm_eval_transform(tmp_path):
    root = write_folder(tmp_path / "val", names=WNIDS[:1], per_class=1, size=(50, 70))
    data = cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 32, 0.9)
    image, label, index = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 0 and index == 0
    ref_tf = transforms_imagenet_eval(img_size=32, crop_pct=0.9, interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    ref = ref_tf(Image.open(data.samples[0][0]).convert("RGB"))
    assert (cdata.to_float(image[None], torch.device("cpu"))[0] - ref).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    (tmp_path / "val" / WNIDS[0]).mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 30)).convert(mode).save(tmp_path / "val" / WNIDS[0] / "a.png" if mode != "CMYK"
                                                                 else tmp_path / "val" / WNIDS[0] / "a.jpg")
    data = cdata.ImageFolderSet(tmp_path / "val", cdata.build_class_index("imagenet", tmp_path / "val"), 16, 1.0)
    assert data[0][0].shape == (3, 16, 16)


def test_unreadable_image_is_reported_and_skipped(tmp_path):
    root = write_folder(tmp_path / "val", per_class=2)
    (root / WNIDS[1] / "broken.JPEG").write_bytes(b"not a jpeg")
    data = cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 16, 1.0)
    assert len(data) == 7
    loader = cdata.make_loader(data, batch_size=4, num_workers=0, pin_memory=False)
    with pytest.warns(RuntimeWarning, match="broken.JPEG"):
        batches = list(loader)
    assert sum(len(labels) for _, labels, _ in batches) == 6
    images, labels, indices = batches[0]
    assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8


def test_layout_errors(tmp_path):
    idx = cdata.build_class_index("imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cdata.ImageFolderSet(tmp_path / "missing", idx, 16, 1.0)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.JPEG")
    with pytest.raises(ValueError, match="no class folders"):
        cdata.ImageFolderSet(tmp_path / "flat", idx, 16, 1.0)
    (tmp_path / "empty" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        cdata.ImageFolderSet(tmp_path / "empty", idx, 16, 1.0)


def test_imagenet_c_layout(tmp_path):
    write_folder(tmp_path / "c" / "fog" / "3", per_class=1)
    assert ds.imagenet_c_root(tmp_path / "c", "fog", 3) == tmp_path / "c" / "fog" / "3"
    with pytest.raises(FileNotFoundError, match="corruptions present: \\['fog'\\]"):
        ds.imagenet_c_root(tmp_path / "c", "snow", 1)
    with pytest.raises(FileNotFoundError):
        ds.imagenet_c_root(tmp_path / "nothing", "fog", 1)


def test_limit_spreads_over_classes(tmp_path):
    root = write_folder(tmp_path / "val", per_class=4)
    data = cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 16, 1.0, limit=3)
    assert sorted(label for _, label in data.samples) == [0, 1, 2]


def test_class_mask_for_200_class_subsets(tmp_path):
    root = write_folder(tmp_path / "a", names=["n01443537", "n15075141"], per_class=1)
    data = cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 16, 1.0)
    mask = ds.class_mask(data.classes, 1000, torch.device("cpu"))
    assert mask.sum() == 2 and mask[1] and mask[999]
    assert ds.class_mask(list(range(10)), 10, torch.device("cpu")) is None


def test_shard_sampler_has_no_padding():
    class FakeDist(ShardSampler):
        def __init__(self, n, rank, world):
            torch.utils.data.DistributedSampler.__init__(self, range(n), num_replicas=world, rank=rank, shuffle=False)

    shards = [list(FakeDist(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert [len(FakeDist(7, r, 3)) for r in range(3)] == [3, 2, 2]


def test_pass_loader_reads_like_image_folder_set_and_skips_broken_files(tmp_path):
    root = write_folder(tmp_path / "val", per_class=3)
    (root / WNIDS[1] / "broken.JPEG").write_bytes(b"not a jpeg")
    data = cdata.ImageFolderSet(root, cdata.build_class_index("imagenet", root), 16, 0.9)
    loader, batches = ds.pass_loader(batch_size=4, num_workers=0, pin_memory=False)
    for _ in range(2):  # the same loader serves pass after pass
        batches.start([(path, label, i, (model_view(16, 0.9),)) for i, (path, label) in enumerate(data.samples)])
        with pytest.warns(RuntimeWarning, match="broken.JPEG"):
            got = [(views[0], labels, index) for views, labels, index in loader]
        images, labels, index = (torch.cat([b[k] for b in got]) for k in range(3))
        assert len(index) == 9 and data.samples[sorted(set(range(10)) - set(index.tolist()))[0]][0].endswith("broken.JPEG")
        assert torch.equal(images, torch.stack([data[i][0] for i in index.tolist()]))
        assert labels.tolist() == [data.samples[i][1] for i in index.tolist()]
