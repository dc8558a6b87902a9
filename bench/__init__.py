"""Reproducible performance figures for FRLIE Serve: the model, the service under load, tiling.

``python -m bench all`` runs the CPU set (``--device cuda`` the GPU set); every benchmark writes
JSON to ``bench/results/`` and prints a markdown table, so published numbers can be regenerated
and checked against the machine they came from.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
