"""2-process DDP on CPU (gloo) over webdataset shards: the two ranks train on disjoint samples, with shards
split by node (``wds.split_by_node``) and with the resampled, rank/worker-split source (within one pass over the
shards; no sample shuffle buffer, which would mix passes). SLOW-ish: one subprocess launching 2 ranks,
~20-30 s on 2 cores."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
N_SHARDS, PER_SHARD = 4, 6


def _write_shards(d: Path) -> list[int]:
    d.mkdir(parents=True)
    values = []
    for s in range(N_SHARDS):
        with wds.TarWriter(str(d / f"train-{s:06d}.tar")) as w:
            for i in range(PER_SHARD):
                v = 10 + 9 * (s * PER_SHARD + i)  # distinct constant images
                buf = io.BytesIO()
                Image.fromarray(np.full((8, 8), v, np.uint8)).save(buf, format="PNG")
                w.write({"__key__": f"k{v:04d}", "png": buf.getvalue(), "cls": str(v % 2).encode()})
                values.append(v)
    (d / "meta.json").write_text(json.dumps({"num_classes": 2, "classes": ["a", "b"], "samples": len(values)}))
    return values


def test_ddp_two_ranks_see_disjoint_samples(tmp_path):
    values = _write_shards(tmp_path / "shards")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PL_DISABLE_FORK="1")
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "_ddp_script.py"), str(tmp_path),
                        str(tmp_path / "shards")], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    for mode in ("split", "resampled"):
        seen = []
        for rank in range(2):
            lines = (tmp_path / f"{mode}.rank{rank}").read_text().split()
            seen.append([int(v) for v in lines])
        # 24 samples / (batch 4 x 2 ranks) = 3 steps per rank = 12 samples per rank
        assert len(seen[0]) == len(seen[1]) == 12, mode
        assert not set(seen[0]) & set(seen[1]), f"{mode}: ranks overlap"
        assert set(seen[0]) | set(seen[1]) <= set(values)
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])
