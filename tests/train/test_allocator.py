"""motorec.train.cpu_allocator: which malloc a run trained on (its log and bench_scale's rows record it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from motorec.train import cpu_allocator

TCMALLOC = Path("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def _maps(tmp_path, *libs: str) -> Path:
    p = tmp_path / "maps"
    p.write_text("".join(f"7f00-7f01 r-xp 00000000 08:01 1 {lib}\n" for lib in libs)
                 + "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    return p


def test_allocator_from_the_maps(tmp_path):
    base = ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6")
    assert cpu_allocator(_maps(tmp_path, *base)) == "system"
    assert cpu_allocator(_maps(tmp_path, *base, "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")) == "tcmalloc"
    assert cpu_allocator(_maps(tmp_path, "/opt/lib/libjemalloc.so.2", *base)) == "jemalloc"
    # a path that only mentions an allocator in a folder name is not one
    assert cpu_allocator(_maps(tmp_path, "/opt/libtcmalloc-build/libc.so.6")) == "system"
    assert cpu_allocator(tmp_path / "missing") == "unknown"


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc (Linux)")
def test_this_process_and_a_preloaded_one():
    probe = [sys.executable, "-c", "from motorec.train import cpu_allocator; print(cpu_allocator())"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "system"
    if TCMALLOC.is_file():  # Debian's libtcmalloc-minimal4, where installed
        out = subprocess.run(probe, env={**env, "LD_PRELOAD": str(TCMALLOC)}, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "tcmalloc"


def test_bench_scale_fits_each_allocator_apart():
    from benchmarks.bench_scale import latest

    def row(model, items, alloc, epoch):
        return {"device": "cpu", "model": model, "items": str(items), "allocator": alloc, "seconds_epoch": epoch,
                "fixed_steps": ""}

    rows = [{k: v for k, v in row("motorec", 10, "", "1").items() if k != "allocator"},  # before the column
            row("motorec", 10, "system", "2"), row("motorec", 10, "tcmalloc", "3"), row("motorec", 20, "tcmalloc", "4"),
            row("lightgcn", 10, "system", "5"), row("motorec", 10, "system", "6")]
    got = latest(rows, "cpu")
    assert {k: {n: r["seconds_epoch"] for n, r in v.items()} for k, v in got.items()} == {
        "motorec": {10: "6"}, "motorec (tcmalloc)": {10: "3", 20: "4"}, "lightgcn": {10: "5"}}
