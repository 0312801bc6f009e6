"""zoo.cpu_memory.retain_freed_memory: after it, memory freed by a tensor stays in the process (glibc stops
returning it), which is the whole point; before it, glibc returns a large freed block at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo.cpu_memory import retain_freed_memory_unavailable

CHILD = """
import json, sys, torch
from zoo.cpu_memory import retain_freed_memory
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
ok = retain_freed_memory() if sys.argv[1] == 'retain' else None
before = rss_mb()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
during = rss_mb()
del x
after = rss_mb()
print(json.dumps({"ok": ok, "before": before, "during": during, "after": after}))
"""


def _child(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(retain_freed_memory_unavailable() is not None, reason="needs Linux with glibc")
def test_freed_memory_stays_only_after_retain():
    plain, kept = _child("plain"), _child("retain")
    assert kept["ok"] is True
    for r in (plain, kept):
        assert r["during"] - r["before"] > 60  # the 64 MiB tensor was resident
    assert plain["during"] - plain["after"] > 60  # glibc unmapped it on free
    assert kept["during"] - kept["after"] < 4  # kept for reuse


def test_unavailable_says_why_elsewhere(monkeypatch):
    import zoo.cpu_memory as cm

    monkeypatch.setattr(cm.sys, "platform", "darwin")
    assert "glibc" in cm.retain_freed_memory_unavailable()
    assert cm.retain_freed_memory() is False
