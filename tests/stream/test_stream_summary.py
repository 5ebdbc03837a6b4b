"""The summary line of ``gpua fit`` says what the fit did: its self-learning rounds, a resume, one chunk."""

from __future__ import annotations

from gpua.cli import main
from gpua.features import save_features
from gpua.stream import write_shards
from gpua.synthetic import make_planted


def _data():
    return make_planted(n_samples=1200, n_classes=8, random_state=0)


def test_streamed_fit_says_its_self_learning_rounds_and_its_resume(tmp_path, capsys):
    d = _data()
    write_shards(tmp_path / "sh", d.vfm_features, d.vlm_features, d.labels, rows_per_shard=400,
                 text_prototypes=d.text_prototypes, classnames=d.classnames)
    argv = ["fit", "--shards", str(tmp_path / "sh"), "--out", str(tmp_path / "m.gpua"), "--max-memory", "1GB",
            "--checkpoint", str(tmp_path / "ck"), "--n-steps", "10"]
    assert main(argv) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    # was: no self-learning line at all in a streamed fit, "UCM 3 rounds" (the last mining's) and "1 chunks"
    assert "self-learning round 1:" in text and "of the pseudo-labels changed" in text
    summary = next(line for line in out.out.splitlines() if line.startswith("fitted on"))
    assert "in the last of 3 minings; self-learning kept" in summary and " 1 chunk of 1200 rows" in summary
    assert "resumed" not in summary
    assert main(argv + ["--no-progress"]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fitted on"))
    assert "resumed from --checkpoint" in summary  # was: passes of the earlier run counted without a word


def test_in_memory_fit_says_its_self_learning_rounds(tmp_path, capsys):
    d = _data()
    save_features(tmp_path / "train.npz", vfm_features=d.vfm_features, vlm_features=d.vlm_features,
                  text_prototypes=d.text_prototypes, classnames=d.classnames)
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--out", str(tmp_path / "m.gpua"), "--n-steps", "10",
                 "--no-progress"]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fitted on"))
    assert "in the last of 3 minings; self-learning kept" in summary
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--out", str(tmp_path / "m.gpua"), "--n-steps", "10",
                 "--no-progress", "--param", "self_learning=0"]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fitted on"))
    assert "minings" not in summary and "(UCM " in summary


def test_streamed_progress_bars_name_the_self_learning_round(tmp_path, capsys):
    d = _data()
    write_shards(tmp_path / "sh", d.vfm_features, d.vlm_features, d.labels, rows_per_shard=400,
                 text_prototypes=d.text_prototypes, classnames=d.classnames)
    assert main(["fit", "--shards", str(tmp_path / "sh"), "--out", str(tmp_path / "m.gpua"), "--n-steps", "10"]) == 0
    err = capsys.readouterr().err
    # was: each self-learning mining's bars read "UCM round 1/20" again, as the first mining's
    assert "self-learning 1: UCM round 1/" in err and "self-learning 2: THS refinement" in err
    assert "self-learning 3:" not in err
