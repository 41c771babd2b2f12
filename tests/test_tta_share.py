"""Test-time augmentation on a share of each batch (train.tta_share): the least confident
images see every view, the others keep the plain view's logits."""

import pytest
import torch

from blitz.data.sources import load_data
from blitz.errors import BlitzError
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.training.evaluate import certainty, evaluate, predict_logits, tta_logits
from blitz.training.multilabel import split_logits

TTA = "flip-translate"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # a linear classifier tells mirrored and shifted images apart
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)).eval()


def test_tta_on_a_share_augments_the_least_confident_images_only():
    model, x = _model(), torch.randn(10, 3, 6, 6)
    with torch.no_grad():
        plain, full = model(x), tta_logits(model, x, TTA)
        mixed = tta_logits(model, x, TTA, share=0.3)  # 3 of 10
    doubt = plain.softmax(1).amax(1).argsort()[:3]
    kept = torch.ones(10, dtype=torch.bool).index_fill(0, doubt, False)
    assert torch.allclose(mixed[doubt], full[doubt], atol=1e-6)
    assert torch.equal(mixed[kept], plain[kept])
    assert not torch.allclose(full[doubt], plain[doubt])  # the views changed those logits


def test_with_several_labels_an_image_the_doubtful_are_those_with_a_label_near_even_odds():
    logits = torch.tensor([[4.0, -5.0], [0.1, 6.0], [-3.0, -0.2], [8.0, 9.0]])
    doubtful = certainty(logits, multi_label=True).argsort()
    assert doubtful[:2].sort().values.tolist() == [1, 2]  # a label at 0.1 and one at -0.2
    assert doubtful[-1] == certainty(logits).argmin() == 3  # softmax's least sure: both on
    cfg = build_config("seed", {"train.tta": TTA, "train.tta_share": 0.25})
    data = load_data("multishapes:40")
    torch.manual_seed(0)
    model = create_model(cfg.model.name, len(data.classes), 3).eval()
    images = [data.test.images_at(torch.arange(len(data.test)))]
    by = {
        m: predict_logits(
            model, images, cfg.data.mean, cfg.data.std, TTA, share=0.25, multi_label=m
        )
        for m in (True, False)
    }
    assert not torch.allclose(by[True], by[False])  # the two measures pick other images
    assert torch.allclose(split_logits(model, data.test, cfg)[0], by[True])  # the run's test


def test_tta_on_a_share_that_rounds_up_to_the_whole_batch_is_plain_tta():
    model, x = _model(), torch.randn(10, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(tta_logits(model, x, TTA, share=0.95), tta_logits(model, x, TTA))
        assert torch.equal(tta_logits(model, x, "none", share=0.2), model(x))  # nothing to add


def test_the_run_test_augments_its_share_of_each_batch():
    cfg = build_config(
        "seed", {"train.tta": TTA, "train.tta_share": 0.25, "train.eval_batch_size": 20}
    )
    data = load_data("shapes:60")
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 10, 3, **cfg.model.options).eval()
    mean, std = cfg.data.mean, cfg.data.std
    batches = [data.test.images_at(rows) for rows in torch.arange(len(data.test)).split(20)]
    shared = predict_logits(model, batches, mean, std, TTA, share=0.25).softmax(1).amax(1)
    every = predict_logits(model, batches, mean, std, TTA).softmax(1).amax(1)
    assert not torch.allclose(shared, every)  # a share of 0.25 is not every image
    assert torch.allclose(evaluate(model, data.test, cfg, 10).confidence, shared)


def test_a_tta_share_of_zero_is_refused():
    with pytest.raises(BlitzError, match=r"train\.tta_share.*a share in \(0, 1\]"):
        build_config("fast-gpu", {"train.tta_share": 0})
