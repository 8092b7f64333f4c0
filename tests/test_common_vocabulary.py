"""The shared flags: one spelling and one parse for every command."""
from __future__ import annotations

import argparse

import pytest

import corruptions
from common.seeding import image_generators, image_seed
from common.vocabulary import add_shared_flags, default_workers, parse_corruptions, parse_severities, usable_cores


@pytest.mark.parametrize("values", ["fog,jpeg_compression", ["fog", "jpeg_compression"], ["fog,", "jpeg_compression"],
                                    "fog jpeg_compression", ["fog", "jpeg_compression", "fog"]])
def test_corruption_spellings_agree(values) -> None:
    assert parse_corruptions(values) == ("fog", "jpeg_compression")


def test_all_extra_and_default() -> None:
    assert parse_corruptions("all") == corruptions.CORRUPTIONS and len(corruptions.CORRUPTIONS) == 15
    assert parse_corruptions(["extra"]) == corruptions.EXTRA_CORRUPTIONS
    assert parse_corruptions(None) == corruptions.CORRUPTIONS
    assert parse_corruptions("all,extra") == corruptions.ALL_CORRUPTIONS


def test_unknown_corruption_names_the_closest() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'fgo'.*did you mean 'fog'"):
        parse_corruptions("fgo")
    with pytest.raises(ValueError, match="empty"):
        parse_corruptions(",")


@pytest.mark.parametrize("values,expected", [("1-5", (1, 2, 3, 4, 5)), (["1", "3", "5"], (1, 3, 5)), ("1,3,5", (1, 3, 5)),
                                             ("1 3 5", (1, 3, 5)), (["2-4", "5"], (2, 3, 4, 5)), ([3, 1], (1, 3)),
                                             (2, (2,)), (None, (1, 2, 3, 4, 5))])
def test_severity_spellings(values, expected) -> None:
    assert parse_severities(values) == expected


@pytest.mark.parametrize("bad", ["0", "6", "1-6", "a", "", "1,x"])
def test_bad_severities(bad) -> None:
    with pytest.raises(ValueError, match="--severities"):
        parse_severities(bad)


def test_default_workers_never_exceed_the_cores() -> None:
    assert default_workers() <= max(0, usable_cores() - 1)
    assert default_workers() <= 4
    assert default_workers(7) == 7


def test_shared_flags_accept_both_spellings() -> None:
    parser = argparse.ArgumentParser()
    add_shared_flags(parser, "models", "corruptions", "severities", "workers", "batch_size", "resume", "overwrite",
                     "progress", "seed", batch_size=8)
    a = parser.parse_args(["--models", "pit_s", "--corruptions", "fog", "snow", "--num-workers", "0"])
    b = parser.parse_args(["--model", "pit_s", "--corruptions", "fog,snow", "--workers", "0"])
    assert a.models == b.models == ["pit_s"] and a.workers == b.workers == 0
    assert parse_corruptions(a.corruptions) == parse_corruptions(b.corruptions)
    assert a.batch_size == 8 and a.progress is True and a.resume is False and a.seed is None
    with pytest.raises(KeyError, match="no shared flag"):
        add_shared_flags(parser, "colour")


def test_image_seed_is_per_image_and_stable() -> None:
    assert image_seed(0, "fog", 3, 12) == image_seed(0, "fog", 3, 12)
    assert len({image_seed(0, "fog", 3, i) for i in range(100)}) == 100
    a, b = image_generators(1, [("x", 0), ("x", 1)])
    c, = image_generators(1, [("x", 1)])
    import torch
    assert torch.equal(torch.rand(4, generator=b), torch.rand(4, generator=c))
    assert not torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=image_generators(1, [("x", 1)])[0]))


def test_docs_table_lists_every_shared_flag() -> None:
    from pathlib import Path

    from common.vocabulary import SHARED_FLAGS

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for flag, meaning in SHARED_FLAGS.items():
        assert f"`{flag.replace(' / ', '` / `')}` | {meaning} |" in text, flag
