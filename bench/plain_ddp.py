"""A plain hand-written distributed training loop: what a user would write without the platform.
The bench's baseline, run under ``torchrun``.

    torchrun --standalone --nproc_per_node 2 bench/plain_ddp.py --kind ddp --model cnn --epochs 60

The same model definitions (``training.zoo``, seeded the same), data (sklearn digits, a seeded
10% validation split), global batch, optimizer and learning rate as the platform's spec; the loop
itself is the tight textbook one: a DistributedSampler's rows indexing the in-memory tensors (no
DataLoader: its per-batch collation would halve the speed and flatter the platform), DDP (or FSDP2
``fully_shard`` per block, or a two-stage 1F1B pipeline), forward, backward, step; an evaluation
at the end and the weights saved by rank 0 (``torch.save``). No checkpoints, no export. Prints one JSON line on rank 0:
``{"samples_per_s", "train_s", "val_accuracy"}`` (samples/s over the training loop only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.spec import CNNSpec, MLPSpec
from training.zoo import build_model, split_stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["ddp", "fsdp", "pipeline"], default="ddp")
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("plain-model.pt"))
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = np.random.default_rng(args.seed).permutation(len(y))
    n_val = round(len(y) * 0.1)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])

    torch.manual_seed(args.seed)
    cnn, mlp = CNNSpec(arch="cnn", channels=[32, 64]), MLPSpec(arch="mlp", hidden=[256, 256, 256])
    spec = cnn if args.model == "cnn" else mlp
    model = build_model(spec, x.shape[1], 10)

    if args.kind == "pipeline":
        train_pipeline(args, model, x[train], y[train], rank, world)
    else:
        if args.kind == "ddp":
            net: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for block in model.children():
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
            net = fully_shard(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
        train_x, train_y = x[train], y[train]
        sampler = DistributedSampler(TensorDataset(train_x, train_y), shuffle=True, seed=args.seed, drop_last=True)
        local = args.batch_size // world
        started, samples = time.perf_counter(), 0
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            # the data is in memory: index it directly (a DataLoader's per-batch collation costs ~2x here)
            rows = torch.tensor(list(sampler))
            for step in range(len(rows) // local):
                batch = rows[step * local : (step + 1) * local]
                xb, yb = train_x[batch], train_y[batch]
                optimizer.zero_grad()
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                samples += len(yb) * world
        train_s = time.perf_counter() - started
        if args.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            state = model.state_dict()
        if rank == 0:
            eval_model = build_model(spec, x.shape[1], 10)
            eval_model.load_state_dict(state)
            with torch.no_grad():
                accuracy = (eval_model(x[val]).argmax(1) == y[val]).float().mean().item()
            torch.save(state, args.out)
            print(json.dumps({"samples_per_s": samples / train_s, "train_s": train_s, "val_accuracy": accuracy}))
    dist.destroy_process_group()


def train_pipeline(args: argparse.Namespace, model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                   rank: int, world: int) -> None:  # fmt: skip
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    stage_module = split_stages(model, world)[rank]
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))
    schedule = Schedule1F1B(stage, 4, loss_fn=F.cross_entropy)
    optimizer = torch.optim.Adam(stage_module.parameters(), lr=args.lr)
    steps = len(y) // args.batch_size
    generator = torch.Generator().manual_seed(args.seed)
    started, samples = time.perf_counter(), 0
    for _ in range(args.epochs):
        order = torch.randperm(len(y), generator=generator)
        for step in range(steps):
            rows = order[step * args.batch_size : (step + 1) * args.batch_size]
            optimizer.zero_grad()
            if rank == 0:
                schedule.step(x[rows])
            elif rank == world - 1:
                schedule.step(target=y[rows])
            else:
                schedule.step()
            optimizer.step()
            samples += args.batch_size
    train_s = time.perf_counter() - started
    if rank == world - 1:
        torch.save(stage_module.state_dict(), args.out)
        print(json.dumps({"samples_per_s": samples / train_s, "train_s": train_s}), flush=True)


if __name__ == "__main__":
    main()
