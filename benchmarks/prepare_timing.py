"""prepare_imagenet.py on downloads of the official shape, small in bytes: ILSVRC2012_img_train.tar
holding 1,000 inner ``<wnid>.tar`` of a few 24 px JPEGs each, ILSVRC2012_img_val.tar with 50,000
JPEGs, and the devkit (meta.mat with 1,000 classes whose ILSVRC2012 ids differ from the sorted
order, a 50,000-line ground truth). Time and peak memory of a run writing shards (--format wds)
and of one writing the class-folder tree, each a fresh process.

    uv run python benchmarks/prepare_timing.py --workdir /tmp/official --json /tmp/prepare.json
"""

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from imagenet_fixtures import jpeg_bytes, tar_bytes, write_meta_mat  # noqa: E402

CLASSES, VAL_IMAGES = 1000, 50_000


def add_file(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def write_official_shape(source: Path, per_class: int = 3, seed: int = 0) -> Path:
    """The three downloads under ``source`` (kept when already complete)."""
    if (source / "done").is_file():
        return source
    source.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = [jpeg_bytes(k) for k in range(64)]
    wnids = [f"n{1440764 + 37 * k:08d}" for k in range(CLASSES)]  # sorted, like ImageNet's
    ids = {int(i) + 1: w for i, w in zip(rng.permutation(CLASSES), wnids)}  # ILSVRC2012_ID -> wnid
    with tarfile.open(source / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(wnids):
            inner = {f"{wnid}_{k}.JPEG": pool[(c + k) % len(pool)] for k in range(per_class)}
            add_file(outer, f"{wnid}.tar", tar_bytes(inner))
    truth = rng.integers(1, CLASSES + 1, VAL_IMAGES)
    with tarfile.open(source / "ILSVRC2012_img_val.tar", "w") as val:
        for k in range(VAL_IMAGES):
            add_file(val, f"ILSVRC2012_val_{k + 1:08d}.JPEG", pool[k % len(pool)])
    devkit = source / "devkit-src" / "ILSVRC2012_devkit_t12" / "data"
    write_meta_mat(devkit / "meta.mat", ids, per_class)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
    with tarfile.open(source / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(devkit.parent, arcname="ILSVRC2012_devkit_t12")
    (source / "done").write_text("complete\n")
    return source


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def timed_run(args: list[str]) -> dict:
    """Wall time and peak RSS (this child alone, from wait4) of one command."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "returncode": child.returncode, "output": output.strip().splitlines()[:1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the downloads and the outputs go here")
    parser.add_argument("--per_class", type=int, default=3, help="train images in each inner tar")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    build_started = time.perf_counter()
    source = write_official_shape(work / "downloads", args.per_class)
    figures = {"date": datetime.now().isoformat(timespec="seconds"), "machine": cpu_model(),
               "cpu_cores": len(os.sched_getaffinity(0)), "classes": CLASSES,
               "train_images": CLASSES * args.per_class, "val_images": VAL_IMAGES,
               "build_s": round(time.perf_counter() - build_started, 1)}
    script = [sys.executable, "prepare_imagenet.py", str(source)]
    for fmt in ("wds", "tree"):
        out = work / f"out-{fmt}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        figures[fmt] = timed_run([*script, "--out", str(out), "--format", fmt])
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if all(figures[f]["returncode"] == 0 for f in ("wds", "tree")) else 1


if __name__ == "__main__":
    sys.exit(main())
