"""Keep weights/manifest.json in step with the pretrained tags the zoo registers.

The manifest has one entry per pretrained tag (``<model>.<tag>``). Fields taken from the code (refreshed by
``--write``): model, tag, url, hf_hub_id, download ('direct' | 'manual' | 'hf-hub'), license, converter,
input_size, num_classes. Fields kept by hand (never overwritten): file, sha256 (empty until someone with
the file fills it; once filled, ``pretrained=True`` checks it), top1 / top1_source (the official figure),
notes.

    python tools/weights_manifest.py            # check: exit 1 and list differences if out of date
    python tools/weights_manifest.py --write    # rewrite the manifest from the registry (keeps hand fields)
    python tools/weights_manifest.py --sha256 crossformer_tiny.official_in1k path/to/file.pth   # fill a hash
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from zoo.models._pretrained import MANIFEST_PATH, sha256_file  # noqa: E402

CODE_FIELDS = ("model", "tag", "url", "hf_hub_id", "download", "license", "converter", "input_size", "num_classes")
HAND_FIELDS = {"file": None, "sha256": "", "top1": None, "top1_source": None, "notes": None}
# Hosts that serve the file at the URL itself; anything else (Google Drive viewer, Baidu pan) is 'manual'.
DIRECT_HOSTS = ("cloud.tsinghua.edu.cn", "shi-labs.com", "api.onedrive.com", "github.com", "huggingface.co")


def _download_kind(url: str | None, hf_hub_id: str | None) -> str:
    if hf_hub_id:
        return "hf-hub"
    host = urlparse(url or "").netloc
    return "direct" if any(host.endswith(h) for h in DIRECT_HOSTS) else "manual"


def registry_entries() -> dict[str, dict]:
    """Code-derived fields for every pretrained tag with a weight source."""
    from timm.models import get_pretrained_cfg, model_entrypoint
    from timm.models._registry import _model_with_tags

    out = {}
    for model in zoo.list_models():
        family = model_entrypoint(model).__module__
        for name in _model_with_tags[model]:
            cfg = get_pretrained_cfg(name)
            if cfg is None or not (cfg.url or cfg.hf_hub_id):
                continue
            out[name] = {
                "name": name,
                "model": model,
                "tag": cfg.tag,
                "url": cfg.url,
                "hf_hub_id": cfg.hf_hub_id,
                "download": _download_kind(cfg.url, cfg.hf_hub_id),
                "license": cfg.license,
                "converter": f"{family}:checkpoint_filter_fn",
                "input_size": list(cfg.input_size),
                "num_classes": cfg.num_classes,
            }
    return out


def _default_file(entry: dict) -> str | None:
    """The file name the URL reveals (None when the URL does not carry one)."""
    path = urlparse(entry.get("url") or "").path
    name = path.rsplit("/", 1)[-1]
    return name if re.search(r"\.(pth|pt|pth\.tar|bin|safetensors|npz)$", name) else None


def merged(old: dict[str, dict], new: dict[str, dict]) -> list[dict]:
    entries = []
    for name in sorted(new):
        entry = dict(new[name])
        prev = old.get(name, {})
        for field, default in HAND_FIELDS.items():
            entry[field] = prev.get(field, default)
        if entry["file"] is None:
            entry["file"] = _default_file(entry)
        entries.append(entry)
    return entries


def read_manifest() -> dict[str, dict]:
    if not MANIFEST_PATH.is_file():
        return {}
    return {e["name"]: e for e in json.loads(MANIFEST_PATH.read_text())["weights"]}


def write_manifest(entries: list[dict]) -> None:
    doc = {
        "about": "Pretrained weights of the zoo's models: official sources, licenses, converters and checks. "
        "Kept in step with the registry by tools/weights_manifest.py; sha256/top1/notes are filled by hand.",
        "weights": entries,
    }
    MANIFEST_PATH.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST_PATH.write_text(json.dumps(doc, indent=1) + "\n")


def check(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """Differences between the manifest and the registry (empty when in step)."""
    problems = [f"missing from the manifest: {n}" for n in sorted(set(new) - set(old))]
    problems += [f"in the manifest but not registered: {n}" for n in sorted(set(old) - set(new))]
    for name in sorted(set(new) & set(old)):
        for field in CODE_FIELDS:
            if old[name].get(field) != new[name][field]:
                was, now = old[name].get(field), new[name][field]
                problems.append(f"{name}: {field} is {was!r} in the manifest, {now!r} in code")
        sha = old[name].get("sha256", "")
        if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
            problems.append(f"{name}: sha256 {sha!r} is not 64 lowercase hex digits")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the manifest from the registry")
    parser.add_argument("--sha256", nargs=2, metavar=("NAME", "FILE"), help="record the sha256 of FILE for NAME")
    args = parser.parse_args(argv)
    old, new = read_manifest(), registry_entries()
    if args.sha256:
        name, path = args.sha256
        if name not in old:
            parser.error(f"{name!r} is not in the manifest; run with --write first (known: {len(old)} entries)")
        old[name]["sha256"] = sha256_file(path)
        old[name]["file"] = old[name].get("file") or Path(path).name
        write_manifest([old[n] for n in sorted(old)])
        print(f"{name}: sha256 {old[name]['sha256']}")
        return 0
    if args.write:
        write_manifest(merged(old, new))
        print(f"wrote {MANIFEST_PATH.relative_to(ROOT)} ({len(new)} entries)")
        return 0
    problems = check(old, new)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} difference(s); run `python tools/weights_manifest.py --write`", file=sys.stderr)
        return 1
    print(f"{MANIFEST_PATH.relative_to(ROOT)} is in step with the registry ({len(new)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
