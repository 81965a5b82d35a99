"""results.md, PNG charts and the short table printed at the end of a benchmark run."""

from __future__ import annotations

from pathlib import Path

from runtime.markdown import table

EXERCISE_TITLES = {
    "ex1": "Ex1: eval modes and autograd",
    "ex2": "Ex2: torch.compile (CPU)",
    "ex3": "Ex3: dynamic int8 quantization (torch)",
    "ex6": "Ex6: ONNX Runtime (online vs offline optimization, int8)",
    "ex4": "Ex4: GPU placement, pinned memory, fp16 / bf16 / autocast",
    "ex5": "Ex5: torch.compile modes on GPU",
}


def _fmt(value, pattern="{:.2f}", missing="-"):
    return missing if value is None else pattern.format(value)


def _input_order(results: dict) -> list[str]:
    return [i["name"] for i in results["header"]["inputs"]]


def gate_cell(parity: dict | None) -> str:
    """'0.9931 / 0.962 (0.80) pass': the manifest's gate figures for one artifact ('-' for other rows)."""
    if not parity:
        return "-"
    top10 = parity.get("top10_agreement")
    retrieval = f" / {top10:.3f} ({parity['top10_agreement_worst1pct']:.2f})" if top10 is not None else ""
    return f"{parity['min_cosine']:.4f}{retrieval} {'pass' if parity['passes_parity'] else 'FAIL'}"


def write_markdown(results: dict, path: Path) -> None:
    h = results["header"]
    lines = [
        f"# Benchmark: {h['model']}",
        "",
        f"- created {h['created_at']}; CPU {h['hardware']['cpu']} ({h['hardware']['logical_cores']} logical cores, "
        f"{', '.join(h['hardware']['isa']) or 'ISA unknown'}); **{h['threads']} threads**",
        f"- model: {h['model_info'].get('model_type')}, {h['model_info'].get('num_hidden_layers')} layers, "
        f"dim {h['model_info']['dimension']}, {h['model_info']['pooling']} pooling, "
        f"normalize={h['model_info']['normalize']}",
        f"- runs per measurement: {h['runs']} (after {h['warmup']} warm-up calls"
        + (
            f"; capped at {h['time_budget_s']} s per measurement, actual runs in the table"
            if h.get("time_budget_s")
            else ""
        )
        + ")",
        "- inputs: "
        + "; ".join(
            f"`{i['name']}` = {i['batch_size']} x {i['seq_len']} tokens ({i['real_tokens']} real)" for i in h["inputs"]
        ),
        f"- speedup: median of the baseline / median of the variant; baseline = {h['baseline']}",
        f"- fidelity: {h['fidelity']}",
        "- gate (from the manifest; artifact rows only): min cosine against fp32 on the parity corpus / mean "
        "top-10 agreement with fp32 over the retrieval corpus (worst 1% of texts), pass or FAIL",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items() if v),
        "",
    ]
    by_exercise: dict[str, list[dict]] = {}
    for r in results["records"]:
        by_exercise.setdefault(r["exercise"], []).append(r)
    for exercise, records in by_exercise.items():
        lines += [f"## {EXERCISE_TITLES.get(exercise, exercise)}", ""]
        skipped = [r for r in records if r["skipped"]]
        measured = [r for r in records if not r["skipped"]]
        if measured:
            rows = [
                [
                    r["variant"],
                    r["device"],
                    r["input"],
                    f"{r['batch_size']} x {r['seq_len']}",
                    _fmt(r["median_ms"]),
                    _fmt(r["mean_ms"]),
                    _fmt(r["p95_ms"]),
                    _fmt(r["speedup"], "{:.2f}x"),
                    _fmt(r["min_cosine"], "{:.4f}"),
                    gate_cell(h.get("gate", {}).get(r["variant"])),
                    r["runs"],
                ]
                for r in measured
            ]
            lines += [
                table(
                    [
                        "variant",
                        "device",
                        "input",
                        "batch x seq",
                        "median ms",
                        "mean ms",
                        "p95 ms",
                        "speedup",
                        "min cos",
                        "gate: min cos / top-10 agreement",
                        "runs",
                    ],
                    rows,
                ),
                "",
            ]
        if skipped:
            variants = sorted({r["variant"] for r in skipped})
            lines += [f"Skipped ({skipped[0]['skipped']}): {', '.join(variants)}", ""]
    extras = results.get("extras", {})
    if "int8_module_example" in extras:
        ex = extras["int8_module_example"]
        sizes = extras["state_dict_bytes"]
        lines += [
            "## Ex3 details",
            "",
            f"Printed module `{ex['name']}` ({ex['class']}):",
            "",
            "```",
            ex["printed"],
            "```",
            "",
            f"state_dict on disk: fp32 {sizes['fp32'] / 1e6:.1f} MB, int8 {sizes['int8'] / 1e6:.1f} MB "
            f"({sizes['ratio']}x smaller)",
            "",
        ]
    if "compile_cpu" in extras:
        lines += [
            "## Ex2 details: compile + first call per input size (in order)",
            "",
            table(
                ["input", "first call ms", "graphs compiled"],
                [[c["input"], f"{c['first_call_ms']:.0f}", c["graphs_compiled"]] for c in extras["compile_cpu"]],
            ),
        ]
        lines += [
            "",
            "A size change after the first compile triggers a recompilation (a graph with dynamic shapes); "
            "later sizes reuse it.",
            "",
        ]
    if "onnx_cold_start_ms" in extras:
        lines += ["## Ex6 details: cold start (session creation + first inference, median ms)", ""]
        lines += [f"- {k}: {v:.0f} ms" for k, v in extras["onnx_cold_start_ms"].items()]
        lines.append("")
    if "tensor_cores" in extras:
        lines += ["## Tensor Core check", "", "```", str(extras["tensor_cores"]), "```", ""]
    lines += ["## Charts", "", "![median latency](median_ms.png)", "", "![speedup](speedup.png)", ""]
    path.write_text("\n".join(lines))


def summary_table(results: dict) -> str:
    inputs = _input_order(results)
    rows: dict[tuple[str, str, str], dict] = {}
    for r in results["records"]:
        if r["skipped"]:
            continue
        rows.setdefault((r["exercise"], r["variant"], r["device"]), {})[r["input"]] = r
    columns = "".join(f" {name + ' ms':>14} {'x':>6}" for name in inputs)
    header = f"{'exercise':<5} {'variant':<34} {'dev':<4}{columns} {'min cos':>8}"
    lines = [header, "-" * len(header)]
    for (exercise, variant, device), per_input in rows.items():
        cells = ""
        for name in inputs:
            r = per_input.get(name)
            cells += (
                f" {_fmt(r and r['median_ms'], '{:14.2f}', f'{chr(45):>14}')} "
                f"{_fmt(r and r['speedup'], '{:6.2f}', f'{chr(45):>6}')}"
            )
        cos_values = [r["min_cosine"] for r in per_input.values() if r["min_cosine"] is not None]
        cos = f"{min(cos_values):8.4f}" if cos_values else f"{'-':>8}"
        lines.append(f"{exercise:<5} {variant:<34} {device:<4}{cells} {cos}")
    skipped = sorted({r["variant"] for r in results["records"] if r["skipped"]})
    if skipped:
        lines.append(f"skipped: {', '.join(skipped)}")
    return "\n".join(lines)


def write_charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = _input_order(results)
    measured = [
        r for r in results["records"] if not r["skipped"] and not r["variant"].endswith(("_first_call", "_cold_start"))
    ]
    variants = list(dict.fromkeys(f"{r['variant']} ({r['device']})" for r in measured))
    for metric, filename, ylabel, log in (
        ("median_ms", "median_ms.png", "median latency (ms, log scale)", True),
        ("speedup", "speedup.png", "speedup vs no optimizations (x)", False),
    ):
        fig, axes = plt.subplots(1, len(inputs), figsize=(6 * len(inputs), 0.35 * len(variants) + 2.5), squeeze=False)
        for ax, name in zip(axes[0], inputs, strict=False):
            rows = {f"{r['variant']} ({r['device']})": r for r in measured if r["input"] == name}
            labels = [v for v in variants if v in rows and rows[v][metric] is not None]
            # Fidelity next to every bar: red where the variant fails parity (min cosine < 0.99).
            colors = ["#c44e52" if (rows[v]["min_cosine"] or 0) < 0.99 else "#4c72b0" for v in labels]
            bars = ax.barh(labels, [rows[v][metric] for v in labels], color=colors)
            for bar, v in zip(bars, labels, strict=True):
                cos = rows[v]["min_cosine"]
                ax.annotate(
                    f" cos {cos:.3f}" if cos is not None else "",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center",
                    fontsize=7,
                )
            ax.invert_yaxis()
            ax.set_title(name)
            ax.set_xlabel(ylabel)
            if log:
                ax.set_xscale("log")
            if metric == "speedup":
                ax.axvline(1.0, color="grey", linewidth=0.8)
        fig.suptitle(
            f"{results['header']['model']} - {results['header']['threads']} threads "
            "(red: fails parity, min cosine vs fp32 < 0.99)"
        )
        fig.tight_layout()
        fig.savefig(out / filename, dpi=90)
        plt.close(fig)
