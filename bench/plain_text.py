"""A plain hand-written text-encoder fine-tune under ``torchrun``: the baseline of the bench's
text-encoder row (``bench/training.py``), as ``bench/plain_ddp.py`` is for the zoo models.

    torchrun --standalone --nproc_per_node 2 bench/plain_text.py --epochs 3 --per-source 80

The same data as the platform job of :func:`platform_spec` (docstring sentences of numpy,
sqlalchemy and aiohttp labelled by package, ``tests/support/text_datasets.py``; the platform's
seeded validation split), the same model (MiniLM from its package with mean pooling and a head,
``training.text_encoder``, seeded the same, the embeddings and lower layers frozen the same),
tokenizer and ``max_length``, global batch, optimizer and learning rate. The loop is the
textbook one: a DistributedSampler's rows indexing the in-memory token ids, DDP, forward,
backward, step; an evaluation at the end and the weights saved by rank 0. No checkpoints, no
export. Prints one JSON line on rank 0: ``{"samples_per_s", "train_s", "val_accuracy"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.text_datasets import labelled_sentences, text_csv
from training.text_data import tokenize_texts
from training.text_encoder import build_text_classifier, load_tokenizer

PRETRAINED = "all-minilm-l6-v2"


def platform_spec(file_id: str, epochs: int, batch_size: int, lr: float, seed: int, max_length: int,
                  freeze_layers: int) -> dict[str, Any]:  # fmt: skip
    """The platform job that trains what this script trains (upload :func:`dataset_csv` first)."""
    return {
        "model": {"arch": "text_encoder", "pretrained": PRETRAINED, "max_length": max_length,
                  "freeze_layers": freeze_layers},
        "dataset": {"file_id": file_id, "text_column": "text", "label_column": "source"},
        "validation": {"fraction": 0.1},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "adam", "seed": seed},
    }  # fmt: skip


def dataset_csv(per_source: int) -> bytes:
    return text_csv(labelled_sentences(per_source))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-source", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--freeze-layers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("plain-text-model.pt"))
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = labelled_sentences(args.per_source)
    classes, codes = np.unique(np.array([label for _, label in rows]), return_inverse=True)
    x = torch.from_numpy(tokenize_texts(load_tokenizer(PRETRAINED), [text for text, _ in rows], args.max_length))
    y = torch.from_numpy(codes.astype(np.int64))
    order = np.random.default_rng(args.seed).permutation(len(y))
    n_val = max(1, round(len(y) * 0.1))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])

    torch.manual_seed(args.seed)
    model = build_text_classifier(
        PRETRAINED, len(classes), max_length=args.max_length, dropout=0.1, freeze_encoder=False,
        freeze_layers=args.freeze_layers,
    )  # fmt: skip
    net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    train_x, train_y = x[train], y[train]
    rows_range: Any = range(len(train_y))  # the sampler only takes len(); torch's stub says Dataset
    sampler: DistributedSampler[int] = DistributedSampler(rows_range, shuffle=True, seed=args.seed, drop_last=True)
    local = args.batch_size // world
    started, samples = time.perf_counter(), 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        order_rows = torch.tensor(list(sampler))
        for step in range(len(train_y) // args.batch_size):
            batch = order_rows[step * local : (step + 1) * local]
            optimizer.zero_grad()
            loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
            samples += len(batch) * world
    train_s = time.perf_counter() - started
    if rank == 0:
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[val]).argmax(1) == y[val]).float().mean().item()
        torch.save(model.state_dict(), args.out)
        print(json.dumps({"samples_per_s": samples / train_s, "train_s": train_s, "val_accuracy": accuracy}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
