"""Stream a sharded dataset from S3 on every rank of a torchrun job.

Make the dataset and put it in a bucket once::

    crumpets pack imagenet/train train-shards --shard-size 512MB --shuffle
    aws s3 sync train-shards s3://bucket/train-shards     # or s3fs, rclone, gsutil ...

Then, on each node::

    torchrun --nproc-per-node 2 examples/streaming_s3.py s3://bucket/train-shards \\
        --cache-dir /scratch/crumpets-cache --cache-limit 100GB

Each rank's loader reads ``$RANK`` and ``$WORLD_SIZE`` (torchrun sets them) and takes its
own contiguous part of the epoch's shard order, so a rank downloads about 1 / world_size
of the shards, each once, into the cache. Every rank gets the same number of batches (so
collective calls never wait for a rank that ran out), and together they hold every sample
of the epoch. This script shows that with two all-reduces after each epoch.
Credentials come from the usual places (environment, ~/.aws); ``--endpoint-url`` points
at another S3-compatible store (MinIO, SeaweedFS, Ceph ...).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

from crumpets.augment import ClassificationWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.core import ShardedReader, TurboDataLoader


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the sharded dataset: s3://bucket/prefix (or a folder)")
    parser.add_argument("--cache-dir", help="local folder for whole shards (else byte ranges)")
    parser.add_argument("--cache-limit", help="bytes the cache may hold, e.g. 100GB")
    parser.add_argument("--endpoint-url", help="an S3-compatible store's URL")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nworkers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="output images are SIZE x SIZE")
    args = parser.parse_args(argv)

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        dist.init_process_group("gloo")  # torchrun's environment says where the others are
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    reader = ShardedReader(
        args.url, cache_dir=args.cache_dir, cache_limit=args.cache_limit, storage_options=options
    )
    worker = ClassificationWorker(
        ((3, args.size, args.size), np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )
    loader = TurboDataLoader(reader, args.batch_size, worker, args.nworkers, shuffle=True, seed=0)
    with loader:
        for epoch in range(args.epochs):
            batches, images = 0, 0
            for _, (batch,) in loader:
                batches += 1
                images += len(batch["image"])
            counts = torch.tensor([batches, -batches, images])
            if world_size > 1:
                dist.all_reduce(counts[:2], op=dist.ReduceOp.MAX)  # [max, -min] over ranks
                dist.all_reduce(counts[2:])  # sum over ranks
            if loader.rank == 0:
                print(
                    f"epoch {epoch}: {world_size} rank(s), batches per rank "
                    f"{-int(counts[1])}..{int(counts[0])}, {int(counts[2])} images for a "
                    f"dataset of {len(reader)}"
                )
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
