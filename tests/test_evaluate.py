from dataclasses import asdict

import pytest
import torch

from blitz.data.dataset import Split
from blitz.data.preprocess import normalize
from blitz.models.configs import build_config
from blitz.training.evaluate import (
    accuracy,
    class_scores,
    confused_pairs,
    confusion_matrix,
    evaluate,
    per_class_accuracy,
    score,
    scores,
    top_k_hits,
)
from blitz.training.tables import format_confusion, format_per_class, format_summary


def naive_confusion(labels, predicted, k):
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(labels, predicted):
        matrix[t][p] += 1
    return matrix


def test_confusion_matrix_matches_a_naive_count():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (500,), generator=gen)
    predicted = torch.randint(0, 7, (500,), generator=gen)
    matrix = confusion_matrix(labels, predicted, 7)
    assert matrix.tolist() == naive_confusion(labels.tolist(), predicted.tolist(), 7)
    correct = sum(int(t == p) for t, p in zip(labels.tolist(), predicted.tolist()))
    assert accuracy(matrix) == correct / 500
    for c, share in enumerate(per_class_accuracy(matrix)):
        rows = [p for t, p in zip(labels.tolist(), predicted.tolist()) if t == c]
        assert abs(share - sum(p == c for p in rows) / len(rows)) < 1e-6


def test_class_without_samples_counts_zero():
    matrix = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 3)
    assert per_class_accuracy(matrix) == [0.5, 0.0, 0.0]
    assert "cherry" in format_per_class(matrix, ["apple", "banana", "cherry"])


K = 12  # more than 5 classes, so that top-5 accuracy exists
ABSENT, UNPREDICTED, NEITHER = 3, 5, 9  # no test images; never predicted; neither


def random_case(seed=0, n=400):
    """Logits and labels with some empty classes: one class has no test images, one is never
    predicted, one is neither."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=gen)
    labels[(labels == ABSENT) | (labels == NEITHER)] = 0
    logits = torch.randn(n, K, generator=gen) + 2 * torch.nn.functional.one_hot(labels, K)
    logits[:, UNPREDICTED] -= 100  # never the highest (finite: scikit-learn wants finite scores)
    logits[:, NEITHER] -= 100
    return logits, labels


def naive_scores(truth, predicted, k):
    """precision, recall, F1, support, predicted count per class, by counting pairs one by one."""
    rows = []
    for c in range(k):
        right = sum(1 for t, p in zip(truth, predicted) if t == c and p == c)
        support = sum(1 for t in truth if t == c)
        guessed = sum(1 for p in predicted if p == c)
        precision = right / guessed if guessed else 0.0
        recall = right / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, support, guessed))
    return rows


def naive_top5(logits, truth):
    hits = 0
    for row, t in zip(logits, truth):
        ranked = sorted(range(len(row)), key=lambda c: -row[c])
        hits += t in ranked[:5]
    return hits / len(truth)


def test_every_figure_matches_a_naive_count():
    logits, labels = random_case()
    truth, predicted = labels.tolist(), logits.argmax(1).tolist()
    result = score(logits, labels, K)
    scores = class_scores(result.matrix)
    naive = naive_scores(truth, predicted, K)
    assert naive[ABSENT][3] == 0 and naive[UNPREDICTED][4] == 0 and naive[NEITHER][3:] == (0, 0)
    for c, (precision, recall, f1, support, _) in enumerate(naive):
        assert float(scores.precision[c]) == pytest.approx(precision, abs=1e-12)
        assert float(scores.recall[c]) == pytest.approx(recall, abs=1e-12)
        assert float(scores.f1[c]) == pytest.approx(f1, abs=1e-12)
        assert int(scores.support[c]) == support
    with_support = [r for r in naive if r[3]]
    in_play = [r for r in naive if r[3] or r[4]]  # in the truth or the predictions
    balanced = sum(r[1] for r in with_support) / len(with_support)
    macro = sum(r[2] for r in in_play) / len(in_play)
    weighted = sum(r[2] * r[3] for r in naive) / len(truth)
    assert len(in_play) == K - 1 and len(with_support) == K - 2
    assert scores.balanced_accuracy == pytest.approx(balanced, abs=1e-12)
    assert scores.macro_f1 == pytest.approx(macro, abs=1e-12)
    assert scores.weighted_f1 == pytest.approx(weighted, abs=1e-12)
    assert result.top5_accuracy == pytest.approx(naive_top5(logits.tolist(), truth), abs=1e-12)
    assert 0 < result.top5_accuracy < 1 and result.top5_accuracy > result.accuracy


@pytest.mark.slow
def test_every_figure_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    logits, labels = random_case(seed=1)
    truth, predicted = labels.numpy(), logits.argmax(1).numpy()
    result = score(logits, labels, K)
    recorded = asdict(scores(result, [str(c) for c in range(K)], digits=12))
    report = metrics.classification_report(
        truth, predicted, labels=list(range(K)), output_dict=True, zero_division=0
    )
    for c in range(K):
        mine, theirs = recorded["per_class"][str(c)], report[str(c)]
        for key, their_key in (("precision",) * 2, ("recall",) * 2, ("f1", "f1-score")):
            assert mine[key] == pytest.approx(theirs[their_key], abs=1e-9), (c, key)
        assert mine["support"] == theirs["support"]
    expected = {
        "balanced_accuracy": metrics.balanced_accuracy_score(truth, predicted),
        "macro_f1": metrics.f1_score(truth, predicted, average="macro", zero_division=0),
        "weighted_f1": metrics.f1_score(truth, predicted, average="weighted", zero_division=0),
        "top5_accuracy": metrics.top_k_accuracy_score(
            truth, logits.numpy(), k=5, labels=list(range(K))
        ),
    }
    for key, value in expected.items():
        assert recorded[key] == pytest.approx(value, abs=1e-9), key


def test_no_images_and_few_classes_divide_by_nothing():
    empty = class_scores(torch.zeros(4, 4, dtype=torch.int64))
    assert empty.f1.tolist() == [0.0] * 4 and empty.precision.tolist() == [0.0] * 4
    assert (empty.balanced_accuracy, empty.macro_f1, empty.weighted_f1) == (0.0, 0.0, 0.0)
    labels = torch.tensor([0, 1, 2, 2])
    few = score(torch.eye(5)[[0, 1, 1, 2]], labels, 5)  # 5 classes: no top-5
    assert few.top5 is None and few.top5_accuracy is None
    figures = asdict(scores(few, list("abcde"), digits=6))
    assert figures["top5_accuracy"] is None
    assert figures["per_class"]["b"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": 0.666667,
        "support": 1,
    }
    assert figures["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "top-5" not in format_summary(few.matrix, few.top5_accuracy)
    assert score(torch.empty(0, 8), torch.empty(0, dtype=torch.int64), 8).top5_accuracy == 0.0


def test_evaluate_gathers_the_top5_flag_of_every_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, K, (50,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, K))
    cfg = build_config("seed", {"train.eval_batch_size": 16})
    result = evaluate(model, Split(images, labels), cfg, K)
    with torch.no_grad():
        logits = model(normalize(images, cfg.data.mean, cfg.data.std))
    assert torch.equal(result.top5, top_k_hits(logits, labels))
    assert torch.equal(result.predicted, logits.argmax(1))


# apple: 3 right of 4, 5 predicted; banana: 4 of 6, 5 predicted; cherry: none at all
MATRIX = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])


def test_per_class_table_shows_the_seed_columns_and_the_practitioners():
    lines = format_per_class(MATRIX, ["apple", "banana", "cherry"]).splitlines()
    assert [" ".join(line.split()) for line in lines] == [
        "class correct total accuracy precision recall F1 support",
        "apple 3 4 75.0 % 60.0 % 75.0 % 66.7 % 4",
        "banana 4 6 66.7 % 80.0 % 66.7 % 72.7 % 6",
        "cherry 0 0 0.0 % 0.0 % 0.0 % 0.0 % 0",
    ]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_summary_line_has_balanced_accuracy_f1s_and_top5():
    line = format_summary(MATRIX, 0.9)
    # balanced: (3/4 + 4/6) / 2; macro F1: (6/9 + 8/11) / 2; weighted: (4 * 6/9 + 6 * 8/11) / 10
    assert line == (
        "balanced accuracy 70.83 %, macro F1 69.70 %, weighted F1 70.30 %, top-5 accuracy 90.00 %"
    )


def test_past_100_classes_the_terminal_shows_the_worst_classes_and_confused_pairs():
    k = 101  # the whole matrix of 10,000 classes would print 700 MB
    labels = torch.arange(2 * k) % k
    predicted = torch.where(labels < 3, (labels + 1) % k, labels)  # classes 0-2 always wrong
    matrix = confusion_matrix(labels, predicted, k)
    classes = [f"c{i}" for i in range(k)]
    table = format_per_class(matrix, classes).splitlines()
    assert table[0].startswith("the 100 classes of 101 with the lowest F1, worst first")
    assert len(table) == 2 + 100 and [row.split()[0] for row in table[2:5]] == ["c0", "c1", "c2"]
    confusion = format_confusion(matrix, classes).splitlines()
    assert confusion[0].startswith("confusion matrix: 101 x 101, too large to print")
    assert confusion[1:] == ["  c0 -> c1: 2", "  c1 -> c2: 2", "  c2 -> c3: 2"]


@pytest.mark.parametrize(("k", "whole"), [(20, True), (21, False)])
def test_the_terminal_shows_the_matrix_of_20_classes_and_pairs_past_them(k, whole):
    matrix = confusion_matrix(torch.arange(k), (torch.arange(k) + 1) % k, k)
    text = format_confusion(matrix, [f"class{i}" for i in range(k)]).splitlines()
    assert text[0].startswith("confusion matrix (rows") == whole and len(text) == (
        2 + k if whole else 1 + 10
    )
    assert max(map(len, text)) <= 160  # a wide terminal's line, not 700 characters


def test_confused_pairs_are_the_largest_off_diagonal_cells_in_row_order_on_ties():
    matrix = torch.tensor([[5, 1, 2], [2, 0, 0], [0, 3, 9]])
    assert confused_pairs(matrix, 3) == [(2, 1, 3), (0, 2, 2), (1, 0, 2)]
    assert confused_pairs(torch.eye(3, dtype=torch.int64), 5) == []
