"""Reading from shards against reading from the tree: the same JPEGs written as WebDataset
shards (``shard_writer``), then one pass of the suite's training loader (DataLoader workers,
OpenCV decode, albumentations) over each, interleaved; images/s, their ratio, and the workers'
memory (largest private and resident set of any worker, sampled during the pass).

    uv run python benchmarks/bench.py --shards --json /tmp/shards.json
"""

import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from preprocess import EpochSampler, build_datasets, build_loader  # noqa: E402
from shard_writer import ImageList, list_class_folders, write_shards  # noqa: E402


def worker_memory_mb(pid: int) -> tuple[float, float]:
    """(private, resident) MB of one process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Private_Clean", "Private_Dirty"):
                    fields[name] = int(rest.split()[0])
    except OSError:
        return 0.0, 0.0
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024, fields.get("Rss", 0) / 1024


def one_pass(dataset, batch: int, workers: int, seed: int, sample_every: int = 4) -> dict:
    """Images/s of one training pass from a fresh loader (worker start-up included, as every
    epoch of a shard loader pays it) and the workers' largest memory during it."""
    loader = build_loader(dataset, batch, True, workers, torch.device("cpu"), seed,
                          EpochSampler(len(dataset), seed, True))
    started = time.perf_counter()
    iterator = iter(loader)
    images, private, resident = 0, 0.0, 0.0
    for step, (x, y, _) in enumerate(iterator):
        images += len(y)
        if step % sample_every == 0:
            for process in getattr(iterator, "_workers", []):
                p, r = worker_memory_mb(process.pid)
                private, resident = max(private, p), max(resident, r)
    elapsed = time.perf_counter() - started
    del iterator, loader
    return {"img_s": images / elapsed, "images": images, "worker_private_mb": private, "worker_rss_mb": resident}


def measure_shard_read(tree: Path, work: Path, input_size: int, batch: int, workers: int, rounds: int,
                       seed: int = 0) -> dict:
    """The figures over ``tree/train``; the shards go to ``work/shards`` (reused when complete)."""
    shards = work / "shards"
    train = list_class_folders(tree / "train")
    write_shards(train, ImageList(paths=[]), shards, seed, shard_size=max(1, len(train.names) // 8))
    tree_ds, _ = build_datasets("imagenet1k", str(tree), input_size, need_val=False, rescan=True)
    shard_ds, _ = build_datasets("imagenet1k", str(shards), input_size, need_val=False)
    runs: dict[str, list[dict]] = {"shards": [], "tree": []}
    one_pass(shard_ds, batch, workers, seed)  # warm the page cache for both
    one_pass(tree_ds, batch, workers, seed)
    for _ in range(rounds):
        runs["shards"].append(one_pass(shard_ds, batch, workers, seed))
        runs["tree"].append(one_pass(tree_ds, batch, workers, seed))
    ratios = [s["img_s"] / t["img_s"] for s, t in zip(runs["shards"], runs["tree"])]
    return {
        "images": len(train.names),
        "shards": len(list(shards.glob("*.tar"))),
        "input_size": input_size, "batch": batch, "workers": workers, "rounds": rounds,
        "shards_img_s": round(statistics.median(r["img_s"] for r in runs["shards"]), 1),
        "tree_img_s": round(statistics.median(r["img_s"] for r in runs["tree"]), 1),
        "shards_vs_tree": round(statistics.median(ratios), 3),
        "ratio_samples": [round(r, 3) for r in ratios],
        "worker_private_mb": {k: round(max(r["worker_private_mb"] for r in v), 1) for k, v in runs.items()},
        "worker_rss_mb": {k: round(max(r["worker_rss_mb"] for r in v), 1) for k, v in runs.items()},
    }


def shard_read_table(figures: dict) -> str:
    f = figures
    return "\n".join([
        "| read | images/s | worker private MB | worker RSS MB |", "|---|---|---|---|",
        f"| shards ({f['shards']} tar files) | {f['shards_img_s']:,} | {f['worker_private_mb']['shards']:,} "
        f"| {f['worker_rss_mb']['shards']:,} |",
        f"| class-folder tree | {f['tree_img_s']:,} | {f['worker_private_mb']['tree']:,} "
        f"| {f['worker_rss_mb']['tree']:,} |",
        f"\nshards / tree: {f['shards_vs_tree']:.2f} (median of {f['rounds']} interleaved passes: "
        f"{f['ratio_samples']}); {f['images']} JPEGs, {f['input_size']} px, batch {f['batch']}, "
        f"{f['workers']} workers",
    ])
