"""A run's output folder shared safely: an exclusive lock while a run uses it (:func:`lock_out`) and a record of
what the run wrote (``.zoo-run.json``), so a fresh run refuses a folder that holds another run unless told to
overwrite, and then deletes only the files that run recorded (:func:`prepare_out`); files of the user's are
never deleted."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST, LOCK = ".zoo-run.json", ".zoo-run.lock"


def lock_out(out: Path) -> Any:
    """Take an exclusive ``flock`` on ``<out>/.zoo-run.lock`` and return the open lock file (closing it releases
    the lock; the kernel releases it when the process ends, however it ends), or exit saying which process holds
    it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise SystemExit(f"--out {out}: another run (pid {owner}) is using this folder; wait for it to finish or "
                         "choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def prepare_out(out: Path, outputs: list[str], resume: bool, overwrite: bool, tool: str = "tools/demo.py") -> None:
    """Check ``--out`` (locked by :func:`lock_out`) before a run that writes ``outputs`` (entry names in ``out``)
    writes into it. A fresh run needs a folder without run outputs; with ``overwrite`` it deletes what the earlier
    run recorded in ``.zoo-run.json`` (and nothing else). Output names present that no run recorded are never
    deleted: the run refuses them. Records what this run will write."""
    manifest = out / MANIFEST
    recorded = json.loads(manifest.read_text()).get("created", []) if manifest.is_file() else []
    if not resume:
        if recorded and not overwrite:
            raise SystemExit(
                f"--out {out} holds another run ({', '.join(n for n in recorded if (out / n).exists()) or MANIFEST}); "
                "continue it with --resume, replace it with --overwrite (deletes only what that run wrote), or "
                "choose another --out"
            )
        for name in recorded if overwrite else []:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        recorded = []
        foreign = [n for n in outputs if (out / n).exists() or (out / n).is_symlink()]
        if foreign:
            raise SystemExit(
                f"--out {out} already holds {', '.join(foreign)}, which no zoo run recorded writing; they are not "
                "deleted: move them or choose another --out"
            )
    created = sorted(set(recorded) | set(outputs))
    manifest.write_text(json.dumps({"tool": tool, "created": created}, indent=2))
