import torch

from training.metrics import Accumulator, topk_correct


def test_topk_against_a_hand_computed_case():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top1 = 1
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # label 4: in the top 5, not top 1
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])  # label 0: last, outside the top 5
    labels = torch.tensor([1, 4, 0])
    c1, c5 = topk_correct(logits, labels)
    assert (int(c1), int(c5)) == (1, 2)


def test_accumulator_errors_in_percent():
    acc = Accumulator(torch.device("cpu"))
    logits = torch.eye(4)
    acc.update(torch.tensor(2.0), logits, torch.tensor([0, 1, 2, 0]))
    r = acc.result(distributed=False)
    assert r["count"] == 4 and r["error_top1"] == 25.0 and r["loss"] == 0.5
    assert r["error_top5"] == 0.0  # 4 classes: everything is in the top 5
