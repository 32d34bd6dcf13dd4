"""Plain supervised training of an ``nn.Module`` (dense pre-training and fine-tuning of pruned networks)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..data import TensorSplit
from .progress import progress_bar

__all__ = ["train_plain", "evaluate"]


@torch.no_grad()
def evaluate(model, split: TensorSplit, batch_size: int = 1024) -> dict[str, float]:
    """Accuracy (fraction) and mean negative log-likelihood of ``model`` (a callable ``x -> logits``)."""
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    correct, nll, n = 0, 0.0, 0
    for xb, yb in split.batches(batch_size):
        logits = model(xb)
        correct += int((logits.argmax(-1) == yb).sum())
        nll += float(F.cross_entropy(logits, yb, reduction="sum"))
        n += yb.shape[0]
    if isinstance(model, nn.Module):
        model.train(was_training)
    return {"accuracy": correct / max(n, 1), "nll": nll / max(n, 1)}


def train_plain(
    net: nn.Module,
    train: TensorSplit,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val: TensorSplit | None = None,
    keep_best: bool = True,
    seed: int | None = None,
    progress: bool = True,
    description: str = "train",
) -> list[dict]:
    """Minimise the mean cross-entropy with Adam; with ``val`` and ``keep_best``, restore the weights of the
    epoch with the best validation accuracy (selection never looks at the test set).

    :returns: per-epoch records (``epoch``, ``loss``, ``val_accuracy``).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    best_acc, best_state, history = -1.0, None, []
    bar = progress_bar(range(1, epochs + 1), description, enabled=progress)
    for epoch in bar:
        net.train()
        total, count = 0.0, 0
        for xb, yb in train.batches(batch_size, shuffle=True, generator=generator):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
            count += xb.shape[0]
        record = {"epoch": epoch, "loss": float(total) / max(count, 1)}
        if val is not None:
            record["val_accuracy"] = evaluate(net, val)["accuracy"]
            if keep_best and record["val_accuracy"] > best_acc:
                best_acc, best_state = record["val_accuracy"], copy.deepcopy(net.state_dict())
        history.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history
