"""Generate the table of every registered model (params, GMACs at 224, official top-1, pretrained source).

    python tools/model_table.py            # writes docs/models.md (README.md links it)
    python tools/model_table.py --check    # exit 1 if docs/models.md is out of date

Params and multiply-adds come from building each model on the meta device and counting its reference path
(``zoo.profile``); top-1 and sources come from weights/manifest.json. Nothing is typed by hand here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from zoo.models._pretrained import load_manifest  # noqa: E402
from zoo.profile import model_macs  # noqa: E402

DOC = ROOT / "docs" / "models.md"
INTRO = """# Models

Every model the zoo registers in timm (`import zoo` first). `timm.create_model("<model>.<tag>", pretrained=True)`
downloads the official weights where the host allows it and converts them; for an official file on disk,
`timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="official.pth"))` does the same, and
`zoo-convert official.pth --model <name> --out <name>.safetensors` (`python tools/convert.py` in a checkout) writes
the zoo layout. Sources, licenses, converters and checksums: `weights/manifest.json`. MaxViT: the zoo's `maxvit_*`
hold the same weights as timm's `maxvit_*_tf_*`; use timm's names for timm's implementation and the zoo's for the
zoo's faster paths and its any-size inputs.

## Input sizes: `set_input_size()` and `dynamic_img_size`

Every model takes any input of at least 32 px: blocks pad and crop to their windows and regions, and position
terms that depend on the resolution are resized at run time. So timm's `dynamic_img_size` is always on, and no
model needs the argument. `timm.create_model(name, img_size=S)` and `model.set_input_size(img_size=S)`
make S the model's size. The size is recorded where timm reads it: `pretrained_cfg["input_size"]` (so
`resolve_model_data_config` and timm's scripts use S) and timm's model traits. Some families' official
higher-resolution models change a setting that depends on the size. Those families change that setting too,
and resize the learned tables the way the converter resizes 224 px weights loaded into a model built at S.
Besides the recorded size, `set_input_size(img_size=S)` changes:

- MaxViT: window = grid = S // 32 (12 at 384, 16 at 512, as the official models), every bias table resized
  (timm's geometric resize); `window_size=` sets another window = grid.
- Agent-Swin (S square): agent biases resized to the stage maps S/4 ... S/32; the Swin blocks' window
  max(7, S // 32) (9 at 288, 12 at 384, as the official models), their tables resized (bicubic).
- Agent-PVT (S square): each stage's `pos_embed` and agent biases resized to its map; the outputs at S do not
  change (up to rounding).
- Agent-DeiT (S square): `pos_embed` (bilinear) and the agent biases resized to the S/16 grid; the outputs at S
  do not change (up to rounding).
- DiNAT, DiNAT_s: the dilations, max(1, map // kernel) in odd blocks and 1 in even ones (8/4/2/1 at 224,
  13/6/3/1 at 384, as the official 384 px models); at the sizes of its checkpoints a variant keeps its own table.
- NAT, BiFormer, CrossFormer, the hybrid: nothing; the size is only recorded (NAT's `rpb` depends on the
  kernel, BiFormer's 7×7 regions grow with the map, CrossFormer's position bias is an MLP of the offsets).

State dict keys never change (only the resized tables change shape). Calling at the current size changes
nothing, and frozen parameters stay frozen. A size below 32 px, not made of ints, or (Agent) not square raises
a ValueError and leaves the model as it was. A model resized to 384 gives the same outputs as one built at 384
that loads the same weights through the converter (`tests/models/test_set_input_size.py`).

## The models

"""
FAMILY_NAMES = {
    "maxvit": "MaxViT",
    "biformer": "BiFormer",
    "crossformer": "CrossFormer",
    "agent": "Agent attention",
    "nat": "NAT / DiNAT",
    "hybrid": "hybrid",
}


def _family(name: str) -> str:
    from timm.models import model_entrypoint

    module = model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    return FAMILY_NAMES.get(module, module)


def _source(entry: dict) -> str:
    if entry.get("hf_hub_id"):
        return f"[hf-hub](https://huggingface.co/{entry['hf_hub_id']})"
    host = urlparse(entry.get("url") or "").netloc
    note = "" if entry.get("download") == "direct" else " (manual)"
    return f"[{host}]({entry['url']}){note}"


def rows() -> list[dict]:
    by_model: dict[str, list[dict]] = {}
    for entry in load_manifest().values():
        by_model.setdefault(entry["model"], []).append(entry)
    out = []
    for name in zoo.list_models():
        params, macs = model_macs(name, (3, 224, 224))
        entries = by_model.get(name, [])
        at224 = [e for e in entries if e["input_size"][-1] == 224 and e.get("top1") is not None]
        best = max(at224, key=lambda e: e["top1"], default=None)
        out.append({
            "model": name,
            "family": _family(name),
            "params_m": params / 1e6,
            "gmacs": macs / 1e9,
            "top1": f"{best['top1']:.2f} ({best['tag']})" if best else "—",
            "weights": ", ".join(f"`{e['tag']}`" for e in sorted(entries, key=lambda e: e["tag"])) or "—",
            "source": _source(best or entries[0]) if entries else "—",
        })
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| model | family | params (M) | GMACs @224 | official top-1 @224 (tag) | pretrained tags | source |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| `{r['model']}` | {r['family']} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {r['top1']} | "
            f"{r['weights']} | {r['source']} |"
        )
    lines.append("")
    lines.append(
        f"{len(table)} models. Generated by `python tools/model_table.py` (params and multiply-adds counted on the "
        "meta device through the reference paths, `zoo.profile`; top-1 = the official figure recorded in "
        "`weights/manifest.json`; '(manual)' = the host needs a browser, see the manifest)."
    )
    return "\n".join(lines) + "\n"


def render() -> str:
    return INTRO + markdown(rows())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed tables are out of date")
    args = parser.parse_args(argv)
    doc = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != doc:
            print("out of date: docs/models.md; run `python tools/model_table.py`", file=sys.stderr)
            return 1
        print("docs/models.md is up to date")
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
