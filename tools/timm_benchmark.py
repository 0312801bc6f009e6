"""Run timm's own ``benchmark.py`` (from timm's repository; it is not in the pip package) with the zoo's models
registered, for a second opinion on ``tools/bench_models.py``'s figures.

    git clone --depth 1 https://github.com/huggingface/pytorch-image-models /tmp/timm-repo
    python tools/timm_benchmark.py /tmp/timm-repo/benchmark.py --device cpu --bench inference \\
        --model biformer_tiny -b 8 --num-warm-iter 2 --num-bench-iter 10

Everything after the script's path goes to ``benchmark.py`` unchanged. The only thing this launcher adds is
``import zoo`` before the script runs, so ``timm.create_model`` knows the zoo's names (the script itself only
imports timm). docs/bench_cpu.md compares its figures with ``tools/bench_models.py``'s.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith(".py") or not Path(argv[0]).is_file():
        print("usage: python tools/timm_benchmark.py PATH/TO/timm/benchmark.py [benchmark.py arguments]\n"
              "benchmark.py comes from timm's repository (git clone https://github.com/huggingface/"
              "pytorch-image-models); it is not part of the timm package", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    import zoo  # noqa: F401  (registers the zoo's models in timm before the script looks them up)

    script = argv[0]
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
