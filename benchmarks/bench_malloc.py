"""Memory allocation settings against CPU training speed: `gpt2lab bench` in a fresh process per setting.

    python benchmarks/bench_malloc.py                          # tiny B=16 T=256 and gpt2 B=4 T=1024, eager
    python benchmarks/bench_malloc.py --cases tiny --rounds 3

A training step allocates and frees the same large buffers (activations, the B x T x 50304 logits)
every step. glibc hands any block above its mmap threshold (at most 32 MiB) back to the kernel when
it is freed, so the next step faults every page in again: the 300-step quickstart makes about 125
million minor page faults. The settings tried, each in its own process, the rounds interleaved so
that a busy spell of the machine hits every setting alike:

- ``default``: as a process starts;
- ``thp``: ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's CPU allocator aligns large blocks to 2 MiB and asks
  for transparent huge pages (one fault per 2 MiB instead of per 4 KiB);
- ``keep``: glibc keeps freed memory (``GLIBC_TUNABLES`` mmap_max=0, a trim threshold of 64 GiB),
  so later steps reuse the pages of the first;
- ``keep+thp``;
- ``jemalloc``, ``tcmalloc``: preloaded where the library is installed (Debian: libjemalloc2,
  libtcmalloc-minimal4);
- ``mimalloc``: preloaded from the ``cmeel-mimalloc`` wheel (a gpt2lab dependency on Linux), with its
  defaults; ``mimalloc-keep``: with ``MIMALLOC_PURGE_DELAY=-1`` (freed pages kept), what the ``gpt2lab``
  command sets (gpt2lab/allocator.py).

``--only`` picks settings; ``--env NAME:K=V,K=V`` adds one (e.g. ``bind:OMP_PROC_BIND=close,OMP_PLACES=cores``;
``LD_PRELOAD=tcmalloc`` stands for the installed tcmalloc). Every process runs with
``GPT2LAB_ALLOCATOR=system``, so the ``gpt2lab`` command's own tcmalloc preload never overrides a setting.

Reported per setting: tokens/s (the median over rounds), and the minor page faults and the
system CPU seconds of the whole process (from its rusage).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys

import harness

CASES = {"quickstart": ("mini", 16, 256, 6), "tiny": ("tiny", 16, 256, 6), "gpt2": ("gpt2", 4, 1024, 3)}
KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
LIBS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so*",
        "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so*"}


def settings() -> dict[str, dict]:
    from gpt2lab.allocator import MIMALLOC_ENV, find_mimalloc

    found = {"default": {}, "thp": {"THP_MEM_ALLOC_ENABLE": "1"}, "keep": {"GLIBC_TUNABLES": KEEP},
             "keep+thp": {"GLIBC_TUNABLES": KEEP, "THP_MEM_ALLOC_ENABLE": "1"}}
    for name, pattern in LIBS.items():
        libs = sorted(glob.glob(pattern))
        if libs:
            found[name] = {"LD_PRELOAD": libs[0]}
    mimalloc = find_mimalloc()
    if mimalloc:
        found["mimalloc"] = {"LD_PRELOAD": mimalloc}
        found["mimalloc-keep"] = {"LD_PRELOAD": mimalloc, **MIMALLOC_ENV}
    return found


def run_one(case: tuple, env: dict) -> dict:
    preset, batch, seq_len, steps = case
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "gpt2lab", "bench", "--preset", preset, "-B", str(batch), "-T",
                        str(seq_len), "--steps", str(steps), "--warmup", "1", "--device", "cpu", "--json"],
                       capture_output=True, text=True, env={**os.environ, "GPT2LAB_ALLOCATOR": "system", **env},
                       cwd=harness.ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return {"tokens_per_s": res["tokens_per_s"], "peak_mem_bytes": res["peak_mem_bytes"],
            "minor_faults": after.ru_minflt - before.ru_minflt, "sys_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=["quickstart", "tiny"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="+", default=None, metavar="SETTING",
                   help="built-in settings to run besides default (default all)")
    p.add_argument("--env", action="append", default=[], metavar="NAME:K=V,...", help="one more setting")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    machine = harness.start("cpu")
    envs = settings()
    added = {}
    for spec in args.env:
        name, _, pairs = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in pairs.split(",") if kv)
        if env.get("LD_PRELOAD") in LIBS:
            env["LD_PRELOAD"] = envs[env["LD_PRELOAD"]]["LD_PRELOAD"]
        added[name] = env
    if args.only:
        envs = {k: v for k, v in envs.items() if k in args.only or k == "default"}
    envs.update(added)
    results: dict = {}
    for case in args.cases:
        for rnd in range(args.rounds):
            for name, env in envs.items():
                r = run_one(CASES[case], env)
                results.setdefault(case, {}).setdefault(name, []).append(r)
                harness.log(f"{case} round {rnd + 1} {name}: {r['tokens_per_s']:,.0f} tok/s, "
                            f"{r['minor_faults']:,} minor faults, {r['sys_s']:.1f} s system")
    lines = ["| case | setting | tok/s (median) | vs default | minor page faults | system CPU s | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for case, by in results.items():
        base = statistics.median(r["tokens_per_s"] for r in by["default"])
        for name, rs in by.items():
            tok = statistics.median(r["tokens_per_s"] for r in rs)
            lines.append(f"| {case} | {name} | {tok:,.0f} | {tok / base:.2f}x | "
                         f"{statistics.median(r['minor_faults'] for r in rs):,.0f} | "
                         f"{statistics.median(r['sys_s'] for r in rs):.1f} | "
                         f"{max(r['peak_mem_bytes'] for r in rs) / 2**30:.2f} GiB |")
    print(harness.machine_line(machine))
    print("\n".join(lines))
    harness.write_results(args.out or harness.default_out("malloc"), machine,
                          {"settings": envs, "cases": {k: CASES[k] for k in args.cases}, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
