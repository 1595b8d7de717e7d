"""Charts of the benchmark CSVs: speedup over torch and throughput, one PNG each per device.

For every ``<device-slug>.csv`` it writes ``<device-slug>_speedup.png`` (bars of ``speedup_vs_torch`` per
provider, one panel per op, log scale, a line at 1x) and ``<device-slug>_throughput.png`` (the derived rate
of every provider, torch included, one panel per op and unit). From each (op, provider, mode, shape, dtype)
only the latest ``ok`` row is drawn; speedups are ratios measured side by side in one run.

Usage: ``python -m benchmarks.plot [CSV ...] [--out DIR]`` (default: every CSV in ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from benchmarks.harness import DEFAULT_OUT, read_rows

_SHORT = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd", "float32": "fp32", "bfloat16": "bf16",
          "float16": "fp16", "float64": "fp64"}


def latest_ok(rows: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
    """The most recent ``ok`` row of each (op, provider, mode, shape, dtype), in first-seen order."""
    best: "OrderedDict[tuple, Dict[str, str]]" = OrderedDict()
    for r in rows:
        if r.get("status") != "ok" or not r.get("median_ms"):
            continue
        key = (r["op"], r["provider"], r["mode"], r["shape"], r["dtype"])
        if key not in best or r.get("timestamp", "") >= best[key].get("timestamp", ""):
            best[key] = r
    return list(best.values())


def _label(r: Dict[str, str]) -> str:
    return f"{r['shape']}\n{_SHORT.get(r['mode'], r['mode'])} {_SHORT.get(r['dtype'], r['dtype'])}"


def _grouped_bars(ax, rows: List[Dict[str, str]], value_key: str, providers: List[str], log: bool) -> None:
    import numpy as np

    labels = list(OrderedDict.fromkeys(_label(r) for r in rows))
    width = 0.8 / max(len(providers), 1)
    x = np.arange(len(labels))
    for j, p in enumerate(providers):
        vals = []
        for lab in labels:
            v = next((r.get(value_key) for r in rows if r["provider"] == p and _label(r) == lab), None)
            vals.append(float(v) if v not in (None, "") else np.nan)
        bars = ax.bar(x + (j - (len(providers) - 1) / 2) * width, vals, width, label=p)
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=6, rotation=30, ha="right")
    finite = [v for b in ax.patches for v in [b.get_height()] if v == v and v > 0]
    if log and finite and max(finite) / min(finite) > 20:  # log only where values span decades
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _save(fig, title: str, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_csv(csv_path: str, out_dir: Optional[str] = None) -> List[str]:
    """Draw the speedup and throughput charts of one CSV into ``out_dir``; returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = out_dir or os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(out_dir, exist_ok=True)
    rows = latest_ok(read_rows(csv_path))
    if not rows:
        return []
    slug = os.path.splitext(os.path.basename(csv_path))[0]
    device = rows[-1].get("device", slug)
    stamp = max(r.get("timestamp", "") for r in rows)
    title = f"{device} | torch {rows[-1].get('torch_version', '?')} | triton {rows[-1].get('triton_version', '?')} | {stamp[:10]}"
    written = []

    ops = list(OrderedDict.fromkeys(r["op"] for r in rows))
    sp_ops = [op for op in ops if any(r["op"] == op and r["provider"] != "torch" and r.get("speedup_vs_torch")
                                      for r in rows)]
    if sp_ops:
        fig, axes = plt.subplots(len(sp_ops), 1, figsize=(12, 3.6 * len(sp_ops)), squeeze=False)
        for ax, op in zip(axes[:, 0], sp_ops):
            sub = [r for r in rows if r["op"] == op and r["provider"] != "torch" and r.get("speedup_vs_torch")]
            providers = list(OrderedDict.fromkeys(r["provider"] for r in sub))
            _grouped_bars(ax, sub, "speedup_vs_torch", providers, log=True)
            ax.set_ylim(bottom=min(0.5, ax.get_ylim()[0]) if ax.get_yscale() == "log" else 0)
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
            ax.set_title(f"{op}: speedup over torch (higher is better)", fontsize=9)
            ax.set_ylabel("x torch")
        written.append(_save(fig, title, os.path.join(out_dir, f"{slug}_speedup.png")))

    panels = list(OrderedDict.fromkeys((r["op"], r["rate_unit"]) for r in rows if r.get("rate")))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.6 * len(panels)), squeeze=False)
        for ax, (op, unit) in zip(axes[:, 0], panels):
            sub = [r for r in rows if r["op"] == op and r["rate_unit"] == unit and r.get("rate")]
            providers = list(OrderedDict.fromkeys(r["provider"] for r in sub))
            providers.sort(key=lambda p: p != "torch")
            _grouped_bars(ax, sub, "rate", providers, log=True)
            ax.set_title(f"{op}: throughput ({unit}, higher is better)", fontsize=9)
            ax.set_ylabel(unit)
        written.append(_save(fig, title, os.path.join(out_dir, f"{slug}_throughput.png")))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="*", help="CSV files (default: benchmarks/results/*.csv)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: next to each CSV)")
    args = parser.parse_args(argv)
    paths = args.csv or sorted(glob.glob(os.path.join(DEFAULT_OUT, "*.csv")))
    if not paths:
        print(f"no CSV files found in {DEFAULT_OUT}", file=sys.stderr)
        return 1
    for p in paths:
        if not os.path.exists(p):
            print(f"no such file: {p}", file=sys.stderr)
            return 1
        for out in plot_csv(p, args.out):
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
