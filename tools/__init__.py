"""Command-line tools. Run from a checkout as ``python tools/<name>.py``; the wheel installs this folder as the
``zoo_tools`` package, and the console scripts ``zoo-train``, ``zoo-export``, ``zoo-predict``, ``zoo-convert``,
``zoo-bench`` and ``zoo-demo`` (:mod:`zoo.cli`) run their ``main``."""
