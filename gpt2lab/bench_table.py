"""The table and the ratios of ``gpt2lab bench``'s results (:mod:`gpt2lab.bench` measures them).

:func:`add_compile_ratios` and :func:`add_peer_ratios` put compiled/eager and gpt2lab/peer ratios on
results measured side by side in one run; :func:`format_table` prints them, with the machine and the
matmul peaks above the table and what its figures mean below it.
"""

from __future__ import annotations

from collections.abc import Callable

from .perf import BUSY_CPU_SHARE, machine_line
from .progress import fmt_bytes


def _shape_key(r: dict) -> tuple:
    return (r["preset"], r["batch"], r["seq_len"], r["dtype"], r["device"])


def _busy(r: dict) -> bool:
    return r.get("cpu_share") is not None and r["cpu_share"] < BUSY_CPU_SHARE


def add_compile_ratios(results: list[dict]) -> list[dict]:
    """Set ``compiled_vs_eager`` (tokens/s compiled / tokens/s eager) on compiled results that have an eager twin."""
    eager = {(_shape_key(r), r.get("model")): r for r in results if not r["compile"]}
    for r in results:
        twin = eager.get((_shape_key(r), r.get("model")))
        if r["compile"] and twin is not None:
            r["compiled_vs_eager"] = r["tokens_per_s"] / twin["tokens_per_s"]
            # Not comparable when either side shared the CPU with other processes.
            r["compiled_vs_eager_busy"] = any(_busy(x) for x in (r, twin))
    return results


def add_peer_ratios(results: list[dict]) -> list[dict]:
    """Set ``vs_peer`` (gpt2lab tokens/s / the best peer's, same shape and compile setting) on gpt2lab's results."""
    peers: dict = {}
    for r in results:
        key = (_shape_key(r), r["compile"])
        if r.get("peer", "gpt2lab") != "gpt2lab" and r["tokens_per_s"] > peers.get(key, {}).get("tokens_per_s", 0):
            peers[key] = r
    for r in results:
        twin = peers.get((_shape_key(r), r["compile"]))
        if r.get("peer", "gpt2lab") == "gpt2lab" and twin is not None:
            r["vs_peer"], r["peer_name"] = r["tokens_per_s"] / twin["tokens_per_s"], twin["peer"]
            r["vs_peer_busy"] = any(_busy(x) for x in (r, twin))
    return results


def _ratio(r: dict, key: str, suffix: str = "") -> str:
    value = r.get(key)
    return "-" if value is None else f"{value:.2f}x{suffix}" + (" (busy)" if r.get(f"{key}_busy") else "")


def _share(r: dict) -> str:
    tries = len(r.get("attempts", ()))
    return ("-" if r.get("cpu_share") is None else f"{r['cpu_share']:.2f}") + (f" ({tries} tries)" if tries > 1 else "")


def _columns(results: list[dict]) -> list[tuple[str, Callable[[dict], str]]]:
    """The table's columns, (title, cell of a result); datasheet MFU, peer ratio and cpu share only
    where some result has them."""
    def pct(key: str) -> Callable[[dict], str]:
        return lambda r: "-" if r.get(key) is None else f"{100 * r[key]:.1f}%"

    cols = [("model", lambda r: r.get("model", "gpt2lab")), ("preset", lambda r: r["preset"]),
            ("params", lambda r: f"{r['params'] / 1e6:.1f}M"), ("B x T", lambda r: f"{r['batch']} x {r['seq_len']}"),
            ("dtype", lambda r: r["dtype"]), ("compile", lambda r: "on" if r["compile"] else "off"),
            ("tok/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
            ("ms/step (min)", lambda r: f"{r['ms_per_step']:,.1f} ({r['ms_per_step_min']:,.1f})"),
            ("TFLOP/s", lambda r: f"{r['achieved_tflops']:.3f}"), ("MFU bf16", pct("mfu"))]
    if any("mfu_datasheet" in r for r in results):
        cols.append(("MFU datasheet", pct("mfu_datasheet")))
    cols += [("MFU fp32", pct("mfu_fp32")), ("warm-up s", lambda r: f"{r['warmup_s']:.1f}"),
             ("peak mem", lambda r: fmt_bytes(r["peak_mem_bytes"])),
             ("compiled/eager", lambda r: _ratio(r, "compiled_vs_eager"))]
    if any("vs_peer" in r for r in results):
        cols.append(("vs peer", lambda r: _ratio(r, "vs_peer", f" {r.get('peer_name')}")))
    if any(r.get("cpu_share") is not None for r in results):
        cols.append(("cpu share", _share))
    return cols


def _notes(results: list[dict], peaks: dict, titles: list[str]) -> list[str]:
    """What the table's figures mean, below it."""
    steps = sorted({(r["steps"], r["warmup"]) for r in results})
    notes = ["timed steps / warm-up steps: " + ", ".join(f"{s}/{w}" for s, w in steps)
             + "; tok/s = B*T*steps / timed seconds (mean step; fastest step in brackets); "
             "MFU = model FLOPs/token * tok/s / matmul peak", f"peak mem = {results[0]['peak_mem_kind']}"]
    if "MFU datasheet" in titles:
        notes.append(f"MFU datasheet = against the {peaks['datasheet_name']} dense bf16 datasheet peak, "
                     f"{peaks['datasheet_bf16_flops'] / 1e12:g} TFLOP/s")
    if "vs peer" in titles:
        notes.append("vs peer = gpt2lab tok/s / the peer's, same shape and compile setting, in this run; "
                     "the peer's FLOPs are counted as gpt2lab's model of the same shape")
    if "cpu share" in titles:
        notes.append("cpu share = CPU time of this process / (wall time x threads) in the timed steps; "
                     "well below 1 means other processes took CPU and the timings are low "
                     "(N tries: the timed steps were run again after a busy attempt)")
    return notes


def format_table(results: list[dict], peaks: dict) -> str:
    """A plain-text table of results, with the machine and the measured peaks above it."""
    tf32 = " (TF32 allowed)" if peaks.get("fp32_tf32") else ""
    lines = [machine_line(results[0])] if results else []
    lines.append(f"matmul peak (best of {peaks['matmul_repeats']}, measured in this run): "
                 f"bf16 {peaks['peak_bf16_flops'] / 1e12:.3f} TFLOP/s (n={peaks['peak_bf16_n']}), "
                 f"fp32{tf32} {peaks['peak_fp32_flops'] / 1e12:.3f} TFLOP/s (n={peaks['peak_fp32_n']})")
    cols = _columns(results)
    rows = [[title for title, _ in cols]] + [[cell(r) for _, cell in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    left = {"model", "preset", "params", "dtype", "compile"}

    def fmt(row: list[str]) -> str:
        return "  ".join(x.ljust(w) if title in left else x.rjust(w) for x, w, (title, _) in zip(row, widths, cols))

    lines += [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(row) for row in rows[1:]]
    return "\n".join(lines + (_notes(results, peaks, rows[0]) if results else []))
