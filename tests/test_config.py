"""Typed options: every key checked for type and range where it is made, named as its user wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config import ReviewOptions, RunConfig, ScanOptions, SiteOptions
from detector.options import OptionError, flag
from detector.scoring import ScoreRule


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ScanOptions(bin=2.5), "--bin is 2.5: give a whole number >= 0 and <= 16"),
    (lambda: ScanOptions(tile_px=300.7), "--tile-px is 300.7: give a whole number > 16 and <= 8192"),
    (lambda: ScanOptions(tile_px=True), "--tile-px is True"),
    (lambda: ScanOptions(tile_px=8), "--tile-px is 8"),
    (lambda: ScanOptions(method="best"), "--method is 'best': give one of classical, cnn, fused"),
    (lambda: ScanOptions(method="classical", model=Path("m.pt")), "--model m.pt is not used by --method classical"),
    (lambda: ScanOptions(max_shift_px=-1), "--max-shift-px is -1"),
    (lambda: ScoreRule(threshold=1.5), "--threshold is 1.5: give a finite number > 0 and <= 1"),
    (lambda: ScoreRule(pixel_threshold="0.5"), "--pixel-threshold is '0.5'"),
    (lambda: SiteOptions(buffer_m=0), "--buffer-m is 0: give a finite number > 0"),
    (lambda: SiteOptions(buffer_m=float("inf")), "--buffer-m is inf: give a finite number > 0"),
    (lambda: ScanOptions(min_area_m2=float("nan")), "--min-area-m2 is nan"),
    (lambda: SiteOptions(id_col=3), "--id-col is 3: give a text"),
    (lambda: ReviewOptions(chips=-1), "--chips is -1: give a whole number >= 0"),
    (lambda: ReviewOptions(max_flags=1, target_precision=0.9), "--max-flags and --target-precision both set"),
    (lambda: ReviewOptions(target_precision=0), "--target-precision is 0"),
    (lambda: RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), workers=-1), "--workers is -1"),
    (lambda: RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), before_date="2018-99-99"),
     "--before-date is '2018-99-99': give a real date"),
    (lambda: RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), before_date="2018-06-01",
                       after_date="2017-06-01"), "--before-date 2018-06-01 is not before --after-date 2017-06-01"),
    (lambda: RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), cell_m="big"), "--cell-m is 'big'"),
    (lambda: RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), cell_m=float("inf")), "--cell-m is inf"),
])
def test_a_bad_value_is_refused_with_its_flag_and_what_to_give(make: object, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        make()  # type: ignore[operator]
    assert str(caught.value).startswith(message)


def test_the_same_error_names_the_toml_key_in_a_batch_file() -> None:
    with pytest.raises(OptionError) as caught:
        ReviewOptions(max_flags=1, target_precision=0.9)
    assert caught.value.render(lambda key: f"[run] {key}") == (
        "[run] max_flags and [run] target_precision both set the threshold: give one of them")
    assert flag("max_shift_px") == "--max-shift-px"


def test_values_are_converted_without_loss_and_nothing_else() -> None:
    scan = ScanOptions(max_shift_px=4, model="weights.pt")
    assert isinstance(scan.max_shift_px, float) and scan.model == Path("weights.pt")
    with pytest.raises(OptionError):
        ScanOptions(bin=2.0)  # a whole number is not taken from a float, even an integral one


def test_run_json_parameters_stay_one_flat_table() -> None:
    config = RunConfig(before=Path("a"), after=Path("b"), out=Path("c"), site=SiteOptions(buffer_m=250),
                       scan=ScanOptions(bin=2), review=ReviewOptions(chips=3))
    table = config.to_json()
    assert table["buffer_m"] == 250 and table["bin"] == 2 and table["chips"] == 3 and table["before"] == "a"
    assert table["rule"]["threshold"] == 0.5 and "site" not in table


def test_run_on_the_command_line_has_the_defaults_of_a_batch_file() -> None:
    """``detector run``'s flags default to the option types' own defaults, so a run and a batch score alike."""
    from detector.cli import build_parser

    args = build_parser().parse_args(["run", "--before", "a", "--after", "b", "--out", "c"])
    scan, rule, site, review = ScanOptions(), ScoreRule(), SiteOptions(), ReviewOptions()
    assert (args.bin, args.tile_px, args.max_shift_px, args.min_area_m2, args.method, args.backend) == (
        scan.bin, scan.tile_px, scan.max_shift_px, scan.min_area_m2, scan.method, scan.backend)
    assert (args.threshold, args.pixel_threshold, args.buffer_m, args.chips) == (
        rule.threshold, rule.pixel_threshold, site.buffer_m, review.chips)


def test_the_default_bin_scores_every_pixel_of_10_m_imagery_and_blocks_of_finer_frames() -> None:
    """Every pixel of Sentinel-2 and Landsat (better across cities), 2 x 2 blocks of frames under 5 m (the
    Dabancheng frames: the camp's parts dated better); a bin given is kept whatever the pixels."""
    assert ScanOptions().bin == 0
    assert [ScanOptions().factor(m) for m in (30.0, 10.0, 5.0, 4.99, 3.4, 0.5)] == [1, 1, 1, 2, 2, 2]
    assert ScanOptions(bin=1).factor(0.5) == 1 and ScanOptions(bin=3).factor(10.0) == 3
