"""Where a training step's time goes: matmuls against everything else, from torch.profiler.

    python benchmarks/profile_step.py                                  # gpt2, B=4 x 1024, bf16, compiled
    python benchmarks/profile_step.py --preset mini -B 16 -T 256       # the quickstart's shape
    python benchmarks/profile_step.py --compile off --steps 2 --top 25
    python benchmarks/profile_step.py --preset mini -B 16 -T 256 --recipe configs/quickstart.yaml
    python benchmarks/profile_step.py --preset tiny -B 16 -T 256 --peer nanogpt   # a peer's model, same step

The step is ``gpt2lab.bench.make_train_step``'s (the training loop's ``train_step``: forward under
autocast, backward, clip, AdamW, loss and norm read back) on fixed random batches. After
``--warmup`` steps (compilation happens there) ``--steps`` steps run under the profiler, with
inductor's kernel profiling on so that its generated CPU kernels appear by name. Every operator's
self time goes to one group (matmul, attention, loss, layer norm, elementwise, optimizer, grad
clip); "outside operators" is the wall time the profiler saw no operator in (Python, the
autograd engine, dynamo guards). The page faults and system CPU seconds of the profiled steps
(getrusage) show the cost of memory being returned to the OS and faulted in again; the
allocator in use is printed (run under ``LD_PRELOAD=...libtcmalloc...`` to compare).
Prints a markdown table and the top operators; ``--out`` saves the JSON.
"""

from __future__ import annotations

import argparse
import re
import resource
import time

import torch

import harness
import peers as peer_models
from gpt2lab.allocator import in_use as allocator_in_use
from gpt2lab.bench import make_train_step, recipe_configs
from gpt2lab.device import autocast_for, device_type, resolve_dtype, set_backends
from gpt2lab.model import GPT

# First match wins; names are lower-cased aten ops, or inductor's cpp_fused_* kernels named after what they fuse.
GROUPS = [
    ("optimizer", r"adam|optimizer"),
    ("grad clip", r"foreach|clip_grad"),
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention"),
    ("matmul", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$|mkldnn|onednn|_mm_|mm_plus_mm"),
    # LMCrossEntropy's kernels: logsumexp, or (soft-capped: a plain sum of exponentials) exp and the target's gather
    ("loss", r"log_softmax|nll_loss|cross_entropy|logsumexp|exp_gather"),
    ("layer norm", r"layer_norm"),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return "elementwise and other"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("-B", "--batch", type=int, default=4)
    ap.add_argument("-T", "--seq-len", type=int, default=1024)
    ap.add_argument("--recipe", default=None, help="a config file whose model switches and optimizer to use "
                    "(configs/quickstart.yaml: the quickstart's dropout)")
    ap.add_argument("--peer", default=None, choices=list(peer_models.SOURCES),
                    help="profile a peer's model of the same shape instead (benchmarks/peers.py)")
    ap.add_argument("--peer-file", default=None, help="a local copy of the peer's pinned source file")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--compile", choices=["on", "off"], default="on")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--top", type=int, default=15, help="operators listed by self time (default 15)")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    return ap.parse_args(argv)


def profile(step, warmup: int, steps: int) -> dict:
    """``warmup`` untimed steps, then ``steps`` under the profiler: wall seconds, each operator's and
    each group's self seconds, minor page faults and system CPU seconds."""
    for i in range(warmup):
        harness.log(f"warm-up step {i + 1}/{warmup}: {step(i)[0]:.2f} s")
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(warmup + i)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ops: dict[str, float] = {}
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            ops[e.key] = ops.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    groups: dict[str, float] = {}
    for name, s in ops.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + s
    groups["outside operators"] = max(wall - sum(groups.values()), 0.0)
    return {"wall_s": wall, "groups_s": groups, "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
            "system_cpu_s": ru1.ru_stime - ru0.ru_stime, "ops_s": ops}


def main(argv=None) -> None:
    args = parse_args(argv)
    machine = harness.start("cpu")
    if args.compile == "on":
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True  # generated kernels appear in the profile by name
    device = "cpu"
    set_backends(device)
    cfg, optim_cfg = recipe_configs(args.preset, args.seq_len, args.recipe)
    autocast = autocast_for(device_type(device), resolve_dtype(args.dtype, "cpu"))
    model = peer_models.peer_model(args.peer, args.peer_file)(cfg) if args.peer else GPT(cfg)
    step = make_train_step(model, optim_cfg, vocab_size=cfg.vocab_size, batch=args.batch, seq_len=args.seq_len,
                           device=device, autocast=autocast, compile=args.compile == "on", seed=1337,
                           n_batches=args.warmup + args.steps)
    p = profile(step, args.warmup, args.steps)
    wall, n = p["wall_s"], args.steps

    recipe = f" ({args.recipe})" if args.recipe else ""
    title = (f"{args.peer or 'gpt2lab'} {args.preset}{recipe}, B={args.batch} x T={args.seq_len}, {args.dtype}, "
             f"compile {args.compile}, allocator {allocator_in_use()}: {wall / n:.2f} s a step ({n} profiled)")
    print(f"\n{title}\n")
    print("| group | s a step | share |\n|---|---|---|")
    for g, s in sorted(p["groups_s"].items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {s / n:.3f} | {s / wall:.1%} |")
    print(f"\nminor page faults a step: {p['minor_faults'] / n:,.0f}; system CPU a step: "
          f"{p['system_cpu_s'] / n:.2f} s (of {wall / n:.2f} s wall, {torch.get_num_threads()} threads)\n")
    print("| top operators by self time | group | s a step |\n|---|---|---|")
    for name, s in sorted(p["ops_s"].items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"| `{name[:70]}` | {group_of(name)} | {s / n:.3f} |")
    if args.out:
        harness.write_results(args.out, machine, {
            "preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
            "compile": args.compile, "allocator": allocator_in_use(), "steps": n, **p})


if __name__ == "__main__":
    main()
