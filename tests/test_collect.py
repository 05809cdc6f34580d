"""`image-density collect`: the gather step that merges per-job tables into one tidy table."""

import csv

from image_density import cli


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_collect_concatenates_rows_and_unions_columns(tmp_path):
    _write(tmp_path / "a.csv", [{"dataset": "x", "model": "energy", "nll": "1.5"}])
    _write(tmp_path / "b.csv", [{"dataset": "y", "model": "energy", "nll": "2.5", "extra": "e"}])
    out = tmp_path / "tables" / "all.csv"
    assert (
        cli.main(
            [
                "collect",
                "--key",
                "dataset,model",
                "--out",
                str(out),
                str(tmp_path / "a.csv"),
                str(tmp_path / "b.csv"),
            ]
        )
        == 0
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"dataset": "x", "model": "energy", "nll": "1.5", "extra": ""},
        {"dataset": "y", "model": "energy", "nll": "2.5", "extra": "e"},
    ]


def test_collect_refuses_duplicate_keys_and_writes_nothing(tmp_path, capsys):
    _write(tmp_path / "a.csv", [{"dataset": "x", "model": "energy", "nll": "1.5"}])
    out = tmp_path / "all.csv"
    args = ["collect", "--key", "dataset,model", "--out", str(out), str(tmp_path / "a.csv")]
    assert cli.main([*args, str(tmp_path / "a.csv")]) == 2
    assert "dataset" in capsys.readouterr().err and not out.exists()
    assert cli.main([*args, str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err and not out.exists()


def test_collect_dedupe_keeps_identical_rows_once_and_still_refuses_conflicts(tmp_path, capsys):
    paper = {"dataset": "imagenet64 (paper)", "model": "energy", "psnr_out": "35.67"}
    _write(tmp_path / "a.csv", [{"dataset": "x", "model": "energy", "psnr_out": "30"}, paper])
    _write(tmp_path / "b.csv", [{"dataset": "y", "model": "energy", "psnr_out": "31"}, paper])
    out = tmp_path / "all.csv"
    args = ["collect", "--key", "dataset,model", "--dedupe", "--out", str(out)]
    assert cli.main([*args, str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    with open(out, newline="") as f:
        assert [r["dataset"] for r in csv.DictReader(f)] == ["x", "imagenet64 (paper)", "y"]
    _write(tmp_path / "c.csv", [{"dataset": "x", "model": "energy", "psnr_out": "29"}])
    assert cli.main([*args, str(tmp_path / "a.csv"), str(tmp_path / "c.csv")]) == 2
    assert "c.csv" in capsys.readouterr().err
