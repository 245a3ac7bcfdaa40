"""Writing result files atomically: a temp file in the same folder, then ``os.replace``. A reader
(or a kill at any moment) sees the old file or the new one, never half of one.

    atomic_write_json(out / "suggested_lr.json", result)
    atomic_write(path, lambda f: torch.save(state, f))
"""

import json
import os
import stat
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only
    read it by setting it, which would briefly affect files other threads create)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """What ``open(path, "w")`` would leave: an existing file keeps its mode, a new one gets
    0o666 less the umask (mkstemp's temp files are always 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write via a temp file in the same folder and ``os.replace``: a reader sees the old
    file or the new one, never a half-written one; permissions as a plain open() gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_savefig(fig, path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
