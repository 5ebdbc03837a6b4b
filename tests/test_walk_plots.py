"""Walking the confusion-matrix plot as a demanding user (gpua.report.plot_confusion_matrix).

Each test says whether it failed before its fix ("was: ...") or guards behaviour that was already right.
"""

import gc
import tracemalloc
import warnings

import numpy as np
import pytest

from gpua import GPUAError
from gpua.report import plot_confusion_matrix

matplotlib = pytest.importorskip("matplotlib")


def _conf(names, zero_row=None):
    K = len(names)
    C = np.random.default_rng(0).integers(0, 9, (K, K))
    if zero_row is not None:
        C[zero_row] = 0
    return {"classnames": list(names), "rows_true_columns_predicted": C.tolist()}


@pytest.fixture
def drawn(monkeypatch):
    """The Figure objects plot_confusion_matrix saves, to look at their axes."""
    from matplotlib.figure import Figure

    figs, save = [], Figure.savefig

    def spy(self, *a, **k):
        figs.append((self, [(t.get_text()) for t in self.axes[0].get_xticklabels()], self.axes[0].get_xlabel()))
        return save(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figs


@pytest.mark.parametrize("name, magic", [("c.pdf", b"%PDF"), ("c.svg", b"<?xml"), ("c.jpg", b"\xff\xd8\xff"),
                                         ("c.PNG", b"\x89PNG"), ("confusion", b"\x89PNG")])
def test_plot_is_written_in_the_format_its_suffix_names(tmp_path, name, magic):
    out = plot_confusion_matrix(tmp_path / name, _conf(["cat", "dog"]))
    # was: always PNG bytes, whatever the suffix (a "c.pdf" no PDF reader opened)
    assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


def test_svgz_plot_names_itself_in_its_gzip_header(tmp_path):
    """Was: the header named the temporary file, the name `gunzip -N` restores."""
    import gzip

    out = plot_confusion_matrix(tmp_path / "cm.svgz", _conf(["cat", "dog"]))
    raw = out.read_bytes()
    assert raw[3] & 0x08 and raw[10:].split(b"\0", 1)[0] == b"cm.svgz"  # FNAME flag, then the name
    assert gzip.decompress(raw).lstrip().startswith(b"<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.svgz"]


def test_plot_suffix_matplotlib_cannot_write_is_a_clear_error(tmp_path):
    with pytest.raises(GPUAError, match=r"cannot write \.txt.*\.pdf.*\.png"):
        plot_confusion_matrix(tmp_path / "c.txt", _conf(["cat", "dog"]))
    assert list(tmp_path.iterdir()) == []  # was: a PNG written under the name c.txt


def test_plot_with_many_classes_labels_every_nth(tmp_path, drawn):
    plot_confusion_matrix(tmp_path / "c.png", _conf([f"class_{k}" for k in range(600)]))
    fig, labels, xlabel = drawn[-1]
    # was: 600 labels, 8 pt each on 30 inches: drawn over one another, unreadable
    assert 100 <= len(labels) <= 300 and labels[0] == "class_0"
    assert "class labelled" in xlabel
    w, h = fig.get_size_inches()
    assert w <= 35 and h <= 35


def test_plot_with_few_or_100_classes_labels_them_all(tmp_path, drawn):
    for K in (2, 100):
        plot_confusion_matrix(tmp_path / f"c{K}.png", _conf([f"class_{k}" for k in range(K)]))
        assert len(drawn[-1][1]) == K and drawn[-1][2] == "predicted class"


def test_plot_cuts_long_class_names(tmp_path, drawn):
    names = ["a very long class name " * 10 + str(k) for k in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: UserWarning "Tight layout not applied", the matrix squeezed to nothing
        plot_confusion_matrix(tmp_path / "c.png", _conf(names))
    assert all(len(t) <= 40 and t.endswith("…") for t in drawn[-1][1])


def test_plot_non_ascii_names_warn_at_most_once(tmp_path):
    names = ["北京烤鸭", "café crème", "Ωmega", "가나다"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix(tmp_path / "c.png", _conf(names))
    # was: one "Glyph ... missing from font(s)" warning per character and per draw (16 here)
    assert len(caught) <= 1
    assert all("no installed font" in str(w.message) for w in caught)


def test_plot_returns_the_path_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    out = plot_confusion_matrix("~/plots/c.png", _conf(["cat", "dog"]))
    assert out == tmp_path / "plots" / "c.png" and out.is_file()  # was: Path("~/plots/c.png"), which does not exist


# Already right before this walk: kept as guards.

def test_plot_class_without_test_images_is_a_row_of_zeros(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero / NaN warning
        plot_confusion_matrix(tmp_path / "c.png", _conf(["cat", "dog", "eel"], zero_row=2))


def test_plot_makes_folders_and_replaces_a_file(tmp_path):
    target = tmp_path / "a" / "b" / "c.png"
    plot_confusion_matrix(target, _conf(["cat", "dog"]))
    target.write_bytes(b"old")
    plot_confusion_matrix(target, _conf(["cat", "dog"]))
    assert target.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.png"]


def test_plot_keeps_no_memory_across_calls(tmp_path):
    conf = _conf([f"c{k}" for k in range(5)])
    for _ in range(3):
        plot_confusion_matrix(tmp_path / "c.png", conf)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            plot_confusion_matrix(tmp_path / "c.png", conf)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000


def test_class_report_aligns_wide_class_names():
    import unicodedata

    from gpua.metrics import classification_report
    from gpua.report import format_class_report

    def cols(s):  # where a line ends in a terminal
        return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)

    names = ["北京烤鸭", "café", "dog"]
    report = classification_report(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), classnames=names)
    text = format_class_report(report, {"classnames": names, "rows_true_columns_predicted": [[1, 0, 0], [0, 1, 0], [0, 1, 1]]})
    lines = text.splitlines()
    per_class = [ln for ln in lines[2:5]]
    # was: the CJK row's numbers 4 columns to the right of the others (its name padded as if 4 columns wide)
    assert len({cols(ln) for ln in per_class + [lines[0]]}) == 1
    matrix = lines[lines.index("confusion matrix (rows: true class, columns: predicted)") + 1:]
    assert len({cols(ln) for ln in matrix}) == 1
    assert "100.00" in per_class[0] and "66.67" in per_class[1]  # the numbers themselves unchanged


def test_evaluate_refuses_a_plot_suffix_before_evaluating(tmp_path, capsys):
    """`gpua evaluate --plot cm.txt` ran the whole evaluation, printed the table, then failed
    without writing --json; now refused first, naming --plot."""
    from gpua import GPUA
    from gpua.cli import main
    from gpua.features import save_features

    rng = np.random.default_rng(0)
    Z, X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 6)), rng.normal(size=(3, 6))
    feats = save_features(tmp_path / "f.npz", vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=np.arange(40) % 3,
                          classnames=["a", "b", "c"])
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y, classnames=["a", "b", "c"]).save(tmp_path / "m.gpua")
    assert main(["evaluate", "--model", str(model), "--test", str(feats), "--plot", str(tmp_path / "cm.txt"),
                 "--json", str(tmp_path / "r.json")]) == 2
    out, err = capsys.readouterr()
    assert "--plot" in err and "cannot write .txt" in err and "acc1" not in out and not (tmp_path / "r.json").exists()
    assert main(["evaluate", "--model", str(model), "--test", str(feats), "--plot", str(tmp_path / "cm.svg"),
                 "--json", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "r.json").is_file() and (tmp_path / "cm.svg").read_bytes().lstrip().startswith(b"<")


def test_pgf_without_latex_is_refused_before_any_work(tmp_path, monkeypatch):
    """Was: .pgf was listed as writable, and evaluate --plot c.pgf ended in a traceback ('xelatex' not found) after the evaluation."""
    import gpua.report as report
    from gpua.report import plot_format

    monkeypatch.setattr(report, "_has_latex", lambda: False)
    with pytest.raises(GPUAError, match=r"writes \.pgf files by running xelatex, which is not installed; use one of .*\.pdf") as caught:
        plot_format(tmp_path / "c.pgf")
    assert ".pgf" not in str(caught.value).split("use one of", 1)[1]
    monkeypatch.setattr(report, "_has_latex", lambda: True)
    assert plot_format(tmp_path / "c.pgf") == "pgf"


@pytest.mark.parametrize("name", ["c.png", "c.pdf", "c.svg", "c.svgz", "c.eps", "c.ps", "confusion"])
def test_plots_in_formats_that_carry_metadata_are_marked_as_gpuas(tmp_path, name):
    from gpua._atomic import written_by_gpua_plot

    out = plot_confusion_matrix(tmp_path / name, _conf(["cat", "dog"]))
    assert written_by_gpua_plot(out)
    (tmp_path / "other.png").write_bytes(b"\x89PNG\r\n\x1a\nSoftware\x00Matplotlib")  # a user's own figure
    assert not written_by_gpua_plot(tmp_path / "other.png")


def test_evaluate_plot_replaces_only_a_plot_gpua_wrote(tmp_path, capsys):
    """Was: `evaluate --plot NOTES` (or a photo, a script) replaced that file with the PNG, without a word."""
    from PIL import Image

    from gpua import GPUA
    from gpua.cli import main
    from gpua.features import save_features

    rng = np.random.default_rng(0)
    Z, X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 6)), rng.normal(size=(3, 6))
    feats = save_features(tmp_path / "f.npz", vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=np.arange(40) % 3,
                          classnames=["a", "b", "c"])
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y, classnames=["a", "b", "c"]).save(tmp_path / "m.gpua")
    argv = ["evaluate", "--model", str(model), "--test", str(feats), "--plot"]
    (tmp_path / "NOTES").write_text("my notes\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "holiday.png")
    for name in ("NOTES", "holiday.png"):
        before = (tmp_path / name).read_bytes()
        assert main([*argv, str(tmp_path / name)]) == 2
        assert "is a file gpua did not write, which this command would replace with its plot; nothing was written" in capsys.readouterr().err
        assert (tmp_path / name).read_bytes() == before
    for name in ("cm.png", "cm.png", "cm.svgz", "cm.svgz"):  # its own plots: replaced
        assert main([*argv, str(tmp_path / name)]) == 0, capsys.readouterr().err
    assert main([*argv, str(tmp_path / "cm.jpg")]) == 0
    assert main([*argv, str(tmp_path / "cm.jpg")]) == 2  # a JPEG carries no mark: gpua's own is not told from a photo
    assert "a .jpg file cannot carry gpua's mark" in capsys.readouterr().err


def test_a_plot_inside_a_shard_set_is_named_as_such(tmp_path, capsys):
    """Was: "would write a file with an image's ending inside --test ... give --plot another ending (.csv, .json...)"
    for a shard set, which holds no images, and endings no plot can have."""
    from gpua import GPUA
    from gpua.cli import main
    from gpua.stream import write_shards

    rng = np.random.default_rng(0)
    Z, X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 6)), rng.normal(size=(3, 6))
    write_shards(tmp_path / "set", Z, X, labels=np.arange(40) % 3, text_prototypes=Y, classnames=["a", "b", "c"], rows_per_shard=20)
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y, classnames=["a", "b", "c"]).save(tmp_path / "m.gpua")
    assert main(["evaluate", "--model", str(model), "--test", str(tmp_path / "set"), "--plot", str(tmp_path / "set" / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "lies inside" in err and "a folder gpua wrote and replaces whole" in err and ".csv" not in err
