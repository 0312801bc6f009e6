"""Write a trained classification recipe checkpoint as a timm model folder (timm's ``save_for_hf`` layout).

    python tools/save_timm.py runs/demo/checkpoints/best-*.ckpt --out fmnist_model/

The folder holds ``model.safetensors`` and ``config.json`` whose ``pretrained_cfg`` carries the trained input
size, mean/std, interpolation, crop and the class names. Then, with ``import zoo`` first:

    timm.create_model("local-dir:fmnist_model", pretrained=True)
    python -c "import zoo, runpy, sys; sys.argv = ['validate.py', '--model', 'local-dir:fmnist_model', \\
        '--pretrained', '<image folder>']; runpy.run_path('validate.py', run_name='__main__')"   # timm's script

and ``timm.data.resolve_model_data_config(model)`` gives the recipe's eval transform (no --img-size/--mean/--std).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="classification recipe checkpoint (.ckpt)")
    ap.add_argument("--out", required=True, help="the model folder to write (created)")
    args = ap.parse_args(argv)
    import json

    from recipes.checkpoint import save_timm_folder

    try:
        folder = save_timm_folder(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cfg = json.loads((folder / "config.json").read_text())
    pc = cfg["pretrained_cfg"]
    print(f"wrote {folder}/model.safetensors and config.json: {cfg['architecture']}, {cfg['num_classes']} classes, "
          f"input {pc.get('input_size')}, mean {pc.get('mean')}, std {pc.get('std')}, "
          f"{pc.get('interpolation')}, crop_pct {pc.get('crop_pct')}")
    print(f'load it with: import zoo, timm; timm.create_model("local-dir:{folder}", pretrained=True)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
