"""The benchmark's report: the targets it checks and its Markdown table (the README's Performance section)."""

from __future__ import annotations


def targets(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets, as (what, met, measured)."""
    c = {x["case"]: x for x in report["cases"]}
    speed = {k: v["tok_s_per_stream"] for k, v in c.items()}
    probe = {p["context"]: p["cached_probe_ms"] for p in report["probe_cost"]}
    lo, hi = min(probe), max(probe)
    out = [
        ("4 >= 0.5x the per-stream speed of 1", speed["4"] >= 0.5 * speed["1"], f"{speed['4'] / speed['1']:.2f}x"),
        ("5 >= 5x faster than 6 end to end", c["6"]["median_s"] >= 5 * c["5"]["median_s"],
         f"{c['6']['median_s'] / c['5']['median_s']:.1f}x"),
        (f"probe at {hi} tokens <= 1.3x probe at {lo}", probe[hi] <= 1.3 * probe[lo], f"{probe[hi] / probe[lo]:.2f}x"),
        ("peak memory of 4 <= 1.1x that of 3 (tensors)", c["4"]["peak_mb"] <= 1.1 * max(c["3"]["peak_mb"], 1.0),
         f"{c['4']['peak_mb']:.1f} MB vs {c['3']['peak_mb']:.1f} MB"),
    ]
    if "load_cached_s" in report:
        out.append(("second start from the conversion cache <= 5 s", report["load_cached_s"] <= 5,
                    f"{report['load_cached_s']:.1f} s"))
    return out


def markdown(report: dict) -> str:
    ref = report["cases"][0]["tok_s_per_stream"]
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}, {report['threads']} threads), "
             f"{report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, greedy, "
             f"median of {report['repeats']}, engine cache {report.get('cache', 'dynamic')}"
             f"{', compiled' if report.get('compiled') else ''}"
             f"{', few-row CPU linears' if report.get('few_row_linears') else ''}"]
    rss = any(c.get("rss_mb") is not None for c in report["cases"])
    lines += ["", "| # | case | tok/s per stream | vs 1 | peak tensor memory |" + (" peak RSS growth |" if rss else ""),
              "|---|---|---|---|---|" + ("---|" if rss else "")]
    for c in report["cases"]:
        lines.append(f"| {c['case']} | {c['label']} | {c['tok_s_per_stream']:.1f} | "
                     f"{c['tok_s_per_stream'] / ref:.2f}x | {c['peak_mb']:.1f} MB |"
                     + (f" {c['rss_mb']:.0f} MB |" if rss else ""))
    lines += ["", "| context (tokens) | decode step | cached probe (ours) | re-run probe |", "|---|---|---|---|"]
    for p in report["probe_cost"]:
        lines.append(f"| {p['context']} | {p['decode_step_ms']:.1f} ms | {p['cached_probe_ms']:.1f} ms | "
                     f"{p['rerun_probe_ms']:.1f} ms |")
    lines += ["", f"time to first token (3 + probe every 4): {report['ttft_s']:.2f} s"]
    if "load_cold_s" in report:
        lines.append(f"model load: cold (GGUF conversion) {report['load_cold_s']:.1f} s, "
                     f"from the conversion cache {report['load_cached_s']:.1f} s")
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {value} |" for what, ok, value in targets(report)]
    return "\n".join(lines)
