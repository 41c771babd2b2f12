import torch

from blitz.evaluate import accuracy, confusion_matrix, format_per_class, per_class_accuracy


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
