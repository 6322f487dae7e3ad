"""Tables and plots from benchmark records (dicts with suite, case, optimizer, dtype, peer, n,
tensors, traffic, seconds, stdev; the low-precision and memory suites' also state_dtype,
state_bytes and moved_bytes per param: from the dtypes in the former, measured from the
optimizers' state arrays in the latter).  Ratios compare peers of the same case measured in one run:
'vs torch fused' = torch fused time / this time (above 1: faster than torch);
'of roof' = this row's useful bandwidth / the roof's bandwidth;
'vs float32' (low-precision and memory suites) = numba_opt's all-float32 time / this time."""
import json
import os
import platform

import numpy as np

ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def machine_description():
    try:
        import numba
        versions = f"numba {numba.__version__}, NumPy {np.__version__}"
        import torch
        versions += f", torch {torch.__version__}"
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}"


def moved_bytes(record):
    """Bytes per param one step must move: given for mixed storage, else traffic arrays of the
    dtype."""
    return record.get("moved_bytes") or record["traffic"] * ITEMSIZE[record["dtype"]]


def bandwidth(record):
    """Useful GB/s: the bytes the optimizer must move over the time taken."""
    return moved_bytes(record) * record["n"] / record["seconds"] / 1e9


def _group(record):
    # the low-precision suite compares dtypes within one table
    return (record["suite"], record["case"], "" if "moved_bytes" in record else record["dtype"])


def rows(records):
    """Records grouped by (suite, case, dtype), each with its ratios to the case's peers."""
    groups = {}
    for r in records:
        groups.setdefault(_group(r), []).append(r)
    out = []
    for (suite, case, dtype), members in groups.items():
        roof = next((m for m in members if m["peer"] == "roof 4R/3W"), None)
        for m in members:
            fused = next((o for o in members if o["optimizer"] == m["optimizer"]
                          and o["peer"].startswith("torch") and not o["peer"].startswith("GPU")),
                         None)
            fused = next((o for o in members if o["optimizer"] == m["optimizer"]
                          and o["peer"] in ("torch fused",)), fused)
            if "moved_bytes" in m:  # torch on the same dtypes, and numba_opt all float32
                fused = next((o for o in members if o["peer"].startswith("torch")
                              and o["dtype"] == m["dtype"]
                              and o.get("state_dtype") == m.get("state_dtype")), None)
                base = next((o for o in members if o["peer"] == "numba_opt"
                             and o["dtype"] == "float32"), None)
                m = dict(m, vs_float32=None if base is None else base["seconds"] / m["seconds"])
            out.append(dict(m, gbs=bandwidth(m),
                            vs_torch=None if fused is None else fused["seconds"] / m["seconds"],
                            torch_peer=None if fused is None else fused["peer"],
                            of_roof=None if roof is None else bandwidth(m) / bandwidth(roof)))
    return out


def _time(seconds):
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def markdown(records, machine=""):
    lines = [f"Machine: {machine}", ""] if machine else []
    current = None
    for row in rows(records):
        key = _group(row)
        mixed = "moved_bytes" in row
        if key != current:
            current = key
            lines += ["", f"### {row['suite']}: {row['case']}" + (
                " (bytes per param: the state's, and what one step moves)" if mixed
                else f", {row['dtype']}"), ""]
            lines += ["| optimizer | peer | params | state | state B | moved B | time/step | "
                      "GB/s | vs float32 | vs torch | of roof |",
                      "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"] if mixed else [
                      "| optimizer | peer | time/step | GB/s | vs torch | of roof |",
                      "|---|---|---:|---:|---:|---:|"]
        vs = "" if row["vs_torch"] is None else f"{row['vs_torch']:.2f}x ({row['torch_peer']})"
        of_roof = "" if row["of_roof"] is None else f"{row['of_roof']:.2f}"
        if mixed:
            base = "" if row["vs_float32"] is None else f"{row['vs_float32']:.2f}x"
            lines.append(f"| {row['optimizer']} | {row['peer']} | {row['dtype']} | "
                         f"{row['state_dtype'] or row['dtype']} | {row['state_bytes']:.4g} | "
                         f"{row['moved_bytes']:.4g} | {_time(row['seconds'])} | {row['gbs']:.1f} | "
                         f"{base} | {vs} | {of_roof} |")
        else:
            lines.append(f"| {row['optimizer']} | {row['peer']} | {_time(row['seconds'])} | "
                         f"{row['gbs']:.1f} | {vs} | {of_roof} |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    """One panel per suite that ran: bandwidth against size; bars for the model lists and for
    clipping (the optimizer suite is a table)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(suite, draw) for suite, draw in (
        ("size", _size_panel),
        ("model", lambda ax, rs: _bars_panel(ax, rs, "Model-shaped parameter lists")),
        ("clipping", lambda ax, rs: _bars_panel(
            ax, rs, "Adam + global-norm clipping: fused vs clip-then-step")),
        ("memory", _memory_panel))
        if any(r["suite"] == suite for r in records)]
    if not panels:
        panels = [("size", _size_panel)]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    for ax, (suite, draw) in zip(axes[0], panels):
        draw(ax, [r for r in records if r["suite"] == suite])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size_panel(ax, size):
    for peer in dict.fromkeys(r["peer"] for r in size):
        points = sorted((r["n"], bandwidth(r)) for r in size if r["peer"] == peer)
        style = "--" if peer.startswith("GPU") else ("-" if "numba_opt" in peer else ":")
        width = 2.5 if peer in ("numba_opt", "GPU numba_opt") else 1.2
        ax.plot(*zip(*points), style, marker="o", markersize=3, linewidth=width, label=peer)
    if not size:
        ax.text(0.5, 0.5, "no suite with a plot was run", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", yscale="log", xlabel="elements in the tensor",
           ylabel="useful bandwidth, GB/s (7 arrays per element)",
           title="One Adam step, float32 (CPU solid/dotted, GPU dashed)")
    ax.grid(True, which="both", alpha=0.3)
    if size:
        ax.legend(fontsize=8)


def _memory_panel(ax, records):
    """Step time against the state bytes per param, a labelled point per storage."""
    for r in records:
        label = f"{r['peer']}: {r['dtype']} params, {r['state_dtype'] or r['dtype']} state"
        ax.plot(r["state_bytes"], r["seconds"] * 1e3, "s" if r["peer"].startswith("torch")
                else "o", markersize=8, label=label)
    ax.set(xlabel="state bytes per param (measured)", ylabel="ms per Adam step",
           title=f"Adam, {records[0]['case']}: state memory and step time", xlim=(0, None),
           ylim=(0, None))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _bars_panel(ax, records, title):
    cases = list(dict.fromkeys(r["case"] for r in records))
    peer_names = list(dict.fromkeys(r["peer"] for r in records))
    width = 0.8 / max(1, len(peer_names))
    for k, peer in enumerate(peer_names):
        times = [next((r["seconds"] * 1e3 for r in records
                       if r["case"] == c and r["peer"] == peer), np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + k * width, times, width, label=peer)
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
    ax.set_xticklabels([c.replace(" (", "\n(") for c in cases], fontsize=8)
    ax.set(yscale="log", ylabel="ms per Adam step", title=title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def write(records, directory, machine=""):
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, "results.json"),
             "markdown": os.path.join(directory, "results.md"),
             "plot": os.path.join(directory, "throughput.png")}
    with open(paths["json"], "w") as f:
        json.dump({"machine": machine, "records": records}, f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(records, machine))
    plot(records, paths["plot"])
    return paths
