"""A run's models share its passes: each image is decoded once per run (per group of --models-at-once) and
each on-the-fly (image, corruption, severity) is computed once for every model; the cells are the ones a
one-model run gives, and a run killed in the middle of a shared pass resumes to the same records."""
from pathlib import Path

import pytest

import corruptions
from robustness import datasets as ds
from robustness import runner
from robustness.runner import ModelSpec, run_robustness
from tests.folder_fixtures import CLASSES
from tests.folder_fixtures import write_folder as write_image_folder

MODELS = [ModelSpec("test_convnext", label="cnn", model_kwargs={"num_classes": 3}),
          ModelSpec("test_vit", label="vit", model_kwargs={"num_classes": 3})]
RUN = dict(class_map="folder", img_size=32, crop_pct=0.9, batch_size=4, num_workers=0, progress=False, device="cpu",
           attacks=["fgsm"], occlusion=True, corrupt_on_the_fly=True, corruptions=["gaussian_noise", "contrast"],
           severities=[1, 3], imagenet_c_size=32)
IMAGES = 9
CELLS_ON_THE_FLY = 4  # 2 corruptions × 2 severities


class Interrupted(Exception):
    """Stands in for Ctrl-C / a killed job in the middle of a pass."""


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> str:
    return str(write_image_folder(tmp_path_factory.mktemp("shared") / "val", CLASSES, 3, 0))


def counts(result) -> dict:
    return {r["key"]: (r["n"], r["top1_correct"], r["top5_correct"]) for r in result["records"]}


@pytest.fixture
def counted(monkeypatch):
    """Counts file decodes (the loader's ``default_loader``) and corrupted images (``corruptions.corrupt``)."""
    tally = {"decodes": 0, "corrupted": 0}
    decode, corrupt = ds.default_loader, corruptions.corrupt

    def counting_decode(path):
        tally["decodes"] += 1
        return decode(path)

    def counting_corrupt(images, *args, **kwargs):
        tally["corrupted"] += images.shape[0]
        return corrupt(images, *args, **kwargs)

    monkeypatch.setattr(ds, "default_loader", counting_decode)
    monkeypatch.setattr(corruptions, "corrupt", counting_corrupt)
    return tally


def test_each_image_is_decoded_once_and_each_corruption_computed_once(val, tmp_path, counted):
    result = run_robustness(MODELS, val, str(tmp_path / "both"), **RUN)
    assert counted == {"decodes": IMAGES, "corrupted": IMAGES * CELLS_ON_THE_FLY}
    assert len(result["records"]) == 2 * (1 + 2 + 1 + CELLS_ON_THE_FLY)  # clean, 2 occlusions, FGSM, 4 corruptions


def test_cells_equal_one_model_runs(val, tmp_path):
    both = counts(run_robustness(MODELS, val, str(tmp_path / "both"), **RUN))
    alone = {}
    for spec in MODELS:
        alone.update(counts(run_robustness([spec], val, str(tmp_path / spec.display), **RUN)))
    assert both == alone


def test_models_at_once_reads_the_data_once_per_group(val, tmp_path, counted):
    grouped = run_robustness(MODELS, val, str(tmp_path / "grouped"), models_at_once=1, **RUN)
    assert counted["decodes"] == 2 * IMAGES
    assert counts(grouped) == counts(run_robustness(MODELS, val, str(tmp_path / "together"), **RUN))


def test_a_kill_inside_a_shared_pass_resumes_to_the_same_records(val, tmp_path, monkeypatch):
    """Chunks of 4 images (one batch: 2 models × 8 cells = 16 model calls): killed in the second chunk, the
    rerun computes only the second and third chunks (5 images, 2 batches) and gives the uninterrupted records."""
    run = dict(RUN, chunk_images=4)
    full = run_robustness(MODELS, val, str(tmp_path / "full"), **run)
    calls = {"n": 0, "die_at": 20}
    real = runner._score

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:  # in the second chunk, between two models' cells
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_score", counting)
    with pytest.raises(Interrupted):
        run_robustness(MODELS, val, str(tmp_path / "killed"), **run)
    calls.update(n=0, die_at=-1)
    resumed = run_robustness(MODELS, val, str(tmp_path / "killed"), **run)
    assert calls["n"] == 2 * 16
    assert counts(resumed) == counts(full)
    assert [r["key"] for r in resumed["records"]] == [r["key"] for r in full["records"]]
    assert Path(resumed["report"]).read_text() == Path(full["report"]).read_text().replace(
        str(tmp_path / "full"), str(tmp_path / "killed"))
