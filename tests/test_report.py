"""Report building blocks against naive reference code, and the pages a run writes."""

import base64
import csv
import io
import json
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blitz.data.dataset import Split
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.outputs.comparison import write_comparison
from blitz.outputs.report import write_report
from blitz.training.evaluate import (
    class_scores,
    confused_pairs,
    confusion_matrix,
    per_class_accuracy,
    score,
    scores,
    worst_errors,
)
from blitz.training.metrics import Metrics
from blitz.training.progress import CSV_FIELDS, INTERVAL, Progress, read_metrics_csv
from blitz.training.rundir import RunDir
from blitz.training.tables import CLASS_COLUMNS, summary_figures
from blitz.workflows.finished import eval_run, rebuild_report
from blitz.workflows.runs import train_run


def test_worst_errors_match_a_naive_sort():
    torch.manual_seed(0)
    logits, labels = torch.randn(300, 7) * 3, torch.randint(0, 7, (300,))
    naive = []
    for i in range(300):
        if int(logits[i].argmax()) != int(labels[i]):
            naive.append((-F.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item(), i))
    expected = [i for _, i in sorted(naive)[:20]]
    result = score(logits, labels, 7)
    assert worst_errors(result, labels, 20).tolist() == expected
    assert len(worst_errors(result, labels, 10_000)) == len(naive)  # only the wrong ones


def test_worst_errors_of_a_perfect_model_are_none():
    labels = torch.tensor([0, 1, 2])
    assert len(worst_errors(score(F.one_hot(labels, 3).float(), labels, 3), labels, 5)) == 0


def test_confused_pairs_match_a_naive_scan():
    torch.manual_seed(1)
    matrix = torch.randint(0, 50, (6, 6))
    cells = [(-int(matrix[t, p]), t * 6 + p, t, p) for t in range(6) for p in range(6) if t != p]
    expected = [(t, p, -v) for v, _, t, p in sorted(cells)[:8]]
    assert confused_pairs(matrix, 8) == expected
    assert confused_pairs(torch.eye(4, dtype=torch.int64) * 9, 3) == []


class _Optimizer:
    param_groups = [{"lr": 0.1}]


def test_metrics_csv_rows_are_interval_means(tmp_path):
    cfg = build_config("seed", {"train.log_every": 0})
    progress = Progress(cfg, log=lambda m: None, quiet=True, out=RunDir(tmp_path))
    steps, losses, correct = 2 * INTERVAL + 20, [], []
    progress.start_epoch(0, steps)
    for step in range(1, steps + 1):
        loss = torch.tensor(float(step % 7))
        logits, labels = torch.eye(4)[[0, 1, 2, 3]], torch.tensor([0, 1, step % 4, 0])
        losses.append(loss.item())
        correct.append(int((logits.argmax(1) == labels).sum()))
        progress.step(step, loss, (logits.argmax(1) == labels).sum(), len(labels), _Optimizer())
    record = {"epoch": 1, "train_loss": 0.0, "seconds": 1.0, "lr": 0.1}
    progress.end_epoch(record)
    progress.close()
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    with open(tmp_path / "metrics.csv") as f:
        assert tuple(next(csv.reader(f))) == CSV_FIELDS
    bounds = [(0, INTERVAL), (INTERVAL, 2 * INTERVAL), (2 * INTERVAL, steps)]
    assert [r["step"] for r in rows] == [b for _, b in bounds]
    for row, (a, b) in zip(rows, bounds):
        assert row["loss"] == pytest.approx(sum(losses[a:b]) / (b - a), rel=1e-5)
        assert row["accuracy"] == pytest.approx(sum(correct[a:b]) / (4 * (b - a)), rel=1e-5)
        assert row["lr"] == 0.1 and row["epoch"] == 1 and row["images_per_s"] > 0
    assert record["train_accuracy"] == pytest.approx(sum(correct) / (4 * steps), abs=1e-6)


def _many_class_report(tmp_path, k: int) -> str:
    classes = [f"class{i:04d}" for i in range(k)]
    labels = torch.arange(3 * k) % k
    logits = torch.randn(3 * k, k, generator=torch.Generator().manual_seed(0))
    matrix = confusion_matrix(labels, logits.argmax(1), k)
    metrics = Metrics(
        test_accuracy=0.01, classes=classes, confusion_matrix=matrix.tolist(),
        per_class_accuracy=dict(zip(classes, per_class_accuracy(matrix))),
        epochs=1, steps=3, model="lenet", data="fake",
        history=[{"epoch": 1, "train_loss": 4.6, "lr": 0.1, "seconds": 1.0}],
    )  # fmt: skip
    images = torch.zeros(3 * k, 3, 32, 32, dtype=torch.uint8)
    result = score(logits, labels, k)
    return write_report(RunDir(tmp_path), metrics, Split(images, labels), result).read_text()


@pytest.mark.slow
def test_a_hand_made_metrics_csv_is_a_clear_error_not_a_csv_traceback_or_a_huge_read(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n" + "x" * 200_000 + "\n")  # past csv's field limit
    with pytest.raises(BlitzError, match="field larger than field limit"):
        read_metrics_csv(path)
    path.write_text("step,<b>loss</b>\n1,2\n")  # a row without the curves' figures: left out
    assert read_metrics_csv(path) == []
    with open(path, "wb") as f:  # 100 MB of zeros, in no blocks
        f.truncate(100 * 2**20)
    with pytest.raises(BlitzError, match="larger than 64 MB"):
        read_metrics_csv(path)


def test_report_at_100_classes_scrolls_instead_of_shrinking(tmp_path):
    page = _many_class_report(tmp_path, 100)
    # curves, bars, matrix; the reliability diagram and the risk-coverage curve
    assert page.count("<div class='scroll'>") == 2 and len(_images(page)) == 5


@pytest.mark.slow
def test_report_at_2000_classes_stays_bounded(tmp_path):
    page = _many_class_report(tmp_path, 2000)
    figures = _images(page)
    assert len(figures) == 4  # curves, the 100 worst classes' bars, calibration's two: no matrix
    assert "2000 x 2000 confusion matrix is left out" in page
    assert max(map(len, figures)) < 2_000_000


@pytest.mark.slow
def test_a_run_of_many_classes_records_the_matrix_as_cells_and_reports_from_them(
    tmp_path, monkeypatch
):
    # the bounds of 10,000 classes, met by shapes' 10: a real run of that many takes minutes
    monkeypatch.setattr("blitz.training.metrics.DENSE_CLASSES", 4)
    monkeypatch.setattr("blitz.training.tables.TEXT_CLASSES", 4)
    monkeypatch.setattr("blitz.training.tables.MATRIX_CLASSES", 4)
    monkeypatch.setenv("BLITZ_DATA", str(tmp_path / "cache"))
    lines = []
    cfg = build_config("seed", {"data.source": "shapes:200", "train.max_steps": 3})
    (tmp_path / "run").mkdir()
    train_run(cfg, RunDir(tmp_path / "run"), log=lines.append, quiet=True, started=0.0)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["confusion_matrix"] == [] and saved["confusion_cells"]
    matrix = RunDir(tmp_path / "run").read_metrics().matrix()
    assert int(matrix.sum()) == saved["test_images"]
    assert torch.equal(matrix, eval_run(RunDir(tmp_path / "run"), None, lines.append).matrix)
    assert any(line.startswith("confusion matrix: 10 x 10, too large to print") for line in lines)
    page = rebuild_report(RunDir(tmp_path / "run"), lines.append).read_text()
    assert "Most-confused pairs" in page


def _train(out, **overrides):
    settings = {"data.source": "shapes:200", "train.batch_size": 16, "train.epochs": 2}
    settings.update({"train.log_every": 0, "optim.lr": 0.01, **overrides})
    cfg = build_config("seed", settings)
    out.mkdir()
    return train_run(cfg, RunDir(out), log=lambda m: None, quiet=True, started=0.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLITZ_DATA", str(root / "cache"))
        _train(root / "a")
        _train(root / "b", **{"optim.lr": 0.05, "data.val_fraction": 0.1})
    return root


def _images(page: str) -> list[bytes]:
    """The report's figures (the gallery of worst errors, one image per thumbnail, aside)."""
    return _pngs(re.sub(r"<figure>.*?</figure>", "", page))


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]


@pytest.mark.slow
def test_train_writes_a_self_contained_report(runs):
    page = (runs / "a" / "report.html").read_text()
    for heading in (
        "Summary",
        "Training curves",
        "Results on the test set",
        "Most-confused pairs",
        "Worst errors",
        "Training images",
        "62,006 parameters",
        "Calibration and abstaining",
    ):
        assert heading in page, heading
    images = _images(page)  # the 5 before, the reliability diagram and risk-coverage curve
    assert len(images) == 7 and all(png[:4] == b"\x89PNG" for png in images)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    metrics = json.loads((runs / "a" / "metrics.json").read_text())
    assert all("lr" in h and "train_accuracy" in h for h in metrics["history"])
    assert [r["step"] for r in read_metrics_csv(runs / "a" / "metrics.csv")] == [
        13,
        26,
    ]  # 200 images, batches of 16


@pytest.mark.slow
def test_report_is_rebuilt_from_the_run_directory(runs, monkeypatch):
    monkeypatch.setenv("BLITZ_DATA", str(runs / "cache"))
    path = runs / "a" / "report.html"
    path.unlink()
    assert rebuild_report(RunDir(runs / "a"), log=lambda m: None) == path
    assert len(_images(path.read_text())) == 7


@pytest.mark.slow
def test_comparison_page_shows_differences(runs, tmp_path):
    page = write_comparison([RunDir(runs / "a"), RunDir(runs / "b")], tmp_path / "c.html")
    page = page.read_text()
    assert "optim.lr" in page and "data.val_fraction" in page
    assert "train.batch_size" not in page  # equal in both: not a difference
    assert len(_images(page)) == 1


def test_tensorboard_writes_events_or_says_what_to_install(tmp_path, monkeypatch):
    cfg = build_config("seed", {"train.tensorboard": True})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(BlitzError, match="pip install tensorboard"):
        Progress(cfg, log=lambda m: None, quiet=True, out=RunDir(tmp_path))
    monkeypatch.undo()
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    progress = Progress(cfg, log=lambda m: None, quiet=True, out=RunDir(tmp_path))
    progress.start_epoch(0, 1)
    progress.step(1, torch.tensor(1.0), torch.tensor(2), 2, _Optimizer())
    progress.end_epoch({"epoch": 1, "train_loss": 1.0, "seconds": 1.0, "lr": 0.1})
    progress.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _section_between(page: str, start: str, end: str) -> str:
    return page[page.index(start) : page.index(end)]


@pytest.mark.slow
def test_report_table_of_thousands_of_classes_shows_the_100_worst_by_f1(tmp_path):
    page = _many_class_report(tmp_path, 2000)
    table = _section_between(page, "<h3>Per class</h3>", "<h3>Most-confused pairs</h3>")
    assert "The 100 classes of 2000 with the lowest F1" in table
    shown = re.findall(r"<tr><td>(class\d{4})</td>", table)
    labels = torch.arange(3 * 2000) % 2000
    logits = torch.randn(3 * 2000, 2000, generator=torch.Generator().manual_seed(0))
    f1 = class_scores(confusion_matrix(labels, logits.argmax(1), 2000)).f1.tolist()
    assert shown == [f"class{i:04d}" for i in sorted(range(2000), key=lambda i: (f1[i], i))[:100]]
    assert "balanced accuracy" in page and "top-5 accuracy" not in page  # not recorded


def test_report_shows_the_summary_figures_and_escapes_class_names(tmp_path):
    classes = ["<b>bold</b> & co", *(f"c{i}" for i in range(7))]
    labels = torch.arange(40) % 8
    logits = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    result = score(logits, labels, 8)
    figures = scores(result, classes)
    metrics = Metrics(
        classes=classes, confusion_matrix=result.matrix.tolist(), per_class_accuracy={},
        history=[{"epoch": 1, "train_loss": 2.0}], **Metrics.test_fields(figures),
    )  # fmt: skip
    split = Split(torch.zeros(40, 3, 32, 32, dtype=torch.uint8), labels)
    page = write_report(RunDir(tmp_path), metrics, split, result).read_text()
    for name, value in summary_figures(result.matrix, figures.top5_accuracy):
        assert f"<td>{name}</td><td>{value}</td>" in page, name
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    table = _section_between(page, "<h3>Per class</h3>", "<h3>Most-confused pairs</h3>")
    assert table.count("<tr>") == 1 + 8
    assert "<th>precision</th><th>recall</th><th>F1</th><th>support</th>" in table


def test_each_worst_error_shows_its_file_name_escaped_under_its_thumbnail(tmp_path):
    classes = ["cat", "dog"]
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # rows 1, 2 wrong
    result = score(logits, labels, 2)
    metrics = Metrics(
        test_accuracy=result.accuracy, classes=classes, confusion_matrix=result.matrix.tolist(),
        per_class_accuracy={}, history=[{"epoch": 1, "train_loss": 1.0}],
    )  # fmt: skip
    files = ["test/cat/a.png", "test/cat/<img src=x onerror=alert(1)>.png", "test/dog/c d.png",
             "test/dog/e.png"]  # fmt: skip
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    page = write_report(RunDir(tmp_path), metrics, Split(images, labels, files), result)
    text = page.read_text()
    gallery = text[text.index("<h2>Worst errors</h2>") :].split("</section>")[0]
    figures = re.findall(r"<figure>(.*?)</figure>", gallery)
    assert len(figures) == 2 and "<img src=x" not in gallery
    worst, second = figures  # the highest loss first: row 1 (3.0 against), then row 2
    assert "cat → dog 95%<br><code>test/cat/&lt;img src=x onerror=alert(1)&gt;.png</code>" in worst
    assert "dog → cat 73%<br><code>test/dog/c d.png</code>" in second
    thumbnail = Image.open(io.BytesIO(_pngs(worst)[0]))
    assert thumbnail.size == (8, 8) and thumbnail.getpixel((0, 0)) == (1, 1, 1)  # row 1, as is


@pytest.mark.slow
def test_a_run_records_shows_and_reports_every_figure(runs, monkeypatch):
    metrics = json.loads((runs / "a" / "metrics.json").read_text())
    matrix = torch.tensor(metrics["confusion_matrix"])
    scores = class_scores(matrix)
    assert metrics["balanced_accuracy"] == pytest.approx(scores.balanced_accuracy, abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx(scores.macro_f1, abs=1e-6)
    assert metrics["weighted_f1"] == pytest.approx(scores.weighted_f1, abs=1e-6)
    assert metrics["test_accuracy"] <= metrics["top5_accuracy"] <= 1  # 10 classes: there is one
    for c, record in zip(metrics["classes"], scores.records(metrics["classes"]).values()):
        assert metrics["per_class"][c] == pytest.approx(record, abs=1e-6)
    page = (runs / "a" / "report.html").read_text()
    assert f"<td>top-5 accuracy</td><td>{100 * metrics['top5_accuracy']:.2f} %</td>" in page
    monkeypatch.setenv("BLITZ_DATA", str(runs / "cache"))
    lines: list[str] = []
    eval_run(RunDir(runs / "a"), None, log=lambda m: lines.extend(m.splitlines()))
    headline = (
        f"Accuracy of the network on the 40 test images: {100 * metrics['test_accuracy']:.2f} %"
    )
    assert headline in lines
    header = lines.index(next(line for line in lines if line.startswith("class ")))
    assert lines[header].split()[1:] == list(CLASS_COLUMNS[1:])
    summary = lines[header + 1 + len(metrics["classes"])]
    assert summary.startswith("balanced accuracy ")
    assert f"top-5 accuracy {100 * metrics['top5_accuracy']:.2f} %" in summary


def test_class_names_are_drawn_as_they_are_not_as_maths():
    from blitz.outputs.plots import image_grid_png, per_class_png

    names = ["$\\frac{", "a $5 $HOME b"]  # unbalanced maths would fail matplotlib's parser
    png = image_grid_png(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), names)
    assert png[:4] == b"\x89PNG" and per_class_png(names, [0.5, 0.25])[:4] == b"\x89PNG"
