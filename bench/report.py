"""Summaries, ratios, the terminal/markdown tables and the SVG chart of a run."""

import statistics

CONTENDERS = ("direct", "nginx", "strait")
COLORS = {"direct": "#8c8c8c", "nginx": "#2e7d32", "strait": "#1565c0"}
PCTS = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, keys):
    """Per contender, the median over rounds of each key; and per pair, the median of
    the per-round ratios (each ratio compares runs that sat next to each other in time)."""
    summary = {}
    for c in CONTENDERS:
        mine = [r for r in runs if r["contender"] == c]
        if mine:
            summary[c] = {k: median([r.get(k) for r in mine]) for k in keys}
            summary[c]["rounds"] = len(mine)
            summary[c]["errors"] = sum(r.get("errors", 0) for r in mine)
    ratios = {}
    rounds = sorted({r["round"] for r in runs})
    for a, b in (("strait", "nginx"), ("strait", "direct"), ("nginx", "direct")):
        per_key = {}
        for k in keys:
            vals = []
            for rd in rounds:
                ra = [r.get(k) for r in runs if r["round"] == rd and r["contender"] == a]
                rb = [r.get(k) for r in runs if r["round"] == rd and r["contender"] == b]
                if ra and rb and ra[0] is not None and rb[0]:
                    vals.append(ra[0] / rb[0])
            if vals:
                per_key[k] = median(vals)
        if per_key:
            ratios[f"{a}_vs_{b}"] = per_key
    return {"summary": summary, "ratios": ratios}


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(section, c, base, key):
    if c == base:
        return "1.00"
    r = section["ratios"].get(f"{c}_vs_{base}", {}).get(key)
    if r is None and base == "nginx" and c == "direct":
        inv = section["ratios"].get("nginx_vs_direct", {}).get(key)
        r = 1 / inv if inv else None
    return "-" if r is None else f"{r:.2f}x"


def table(headers, rows):
    """Rows of strings as a markdown table (also readable on a terminal)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def latency_table(section, with_rate=False):
    rows = []
    for c in CONTENDERS:
        s = section["summary"].get(c)
        if not s:
            continue
        row = [c, fmt(s.get("rps"), 0)]
        row += [fmt(s.get(k), 3) for k, _ in PCTS]
        row += [ratio(section, c, "nginx", "rps"), ratio(section, c, "direct", "rps"),
                ratio(section, c, "nginx", "p99_ms"), str(s.get("errors", 0))]
        rows.append(row)
    hdr = ["contender", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "req/s vs nginx",
           "req/s vs direct", "p99 vs nginx", "errors"]
    return table(hdr, rows)


def h2_table(section):
    rows = []
    for c in CONTENDERS:
        s = section["summary"].get(c)
        if s:
            rows.append([c, fmt(s.get("rps"), 0), fmt(s.get("mean_ms"), 3), ratio(section, c, "nginx", "rps"),
                         ratio(section, c, "direct", "rps"), str(s.get("errors", 0))])
    return table(["contender", "req/s", "mean ms", "req/s vs nginx", "req/s vs direct", "errors"], rows)


def ttft_table(section):
    rows = []
    for c in CONTENDERS:
        s = section["summary"].get(c)
        if not s:
            continue
        added = section.get("added", {}).get(c, {})
        rows.append([c, str(int(s.get("samples") or 0)), fmt(s.get("p50_ms"), 3), fmt(s.get("p90_ms"), 3),
                     fmt(s.get("p99_ms"), 3), fmt(added.get("p50_ms"), 3) if c != "direct" else "-",
                     fmt(added.get("p99_ms"), 3) if c != "direct" else "-", str(s.get("errors", 0))])
    return table(["contender", "streams", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "added p50 ms",
                  "added p99 ms", "errors"], rows)


def memory_table(section):
    rows = []
    for name, m in section.items():
        if not isinstance(m, dict) or "held" not in m:
            continue
        rows.append([name, f"{m['held']:,} / {m['target']:,}", f"{m['rss_idle_kib']:,}", f"{m['rss_held_kib']:,}",
                     fmt(m.get("kib_per_stream"), 1), f"{m.get('rss_after_close_kib', 0):,}",
                     str(m.get("active_streams_metric", "-")), str(m.get("upstream_connections_metric", "-")),
                     fmt(m.get("open_s"), 1)])
    return table(["process", "streams held", "RSS idle KiB", "RSS held KiB", "KiB per stream",
                  "RSS after close KiB", "active_streams metric", "upstream connections", "open time s"], rows)


def svg_chart(results):
    """Latency percentiles per contender: one panel per load (closed loop, each fixed
    rate) plus TTFT, grouped bars, each panel on its own linear scale."""
    panels = []
    if "throughput" in results:
        panels.append(("closed loop, wrk -c32 (not CO-safe)", results["throughput"]["summary"]))
    for rate, sec in sorted(results.get("fixed_rate", {}).items(), key=lambda kv: int(kv[0])):
        panels.append((f"fixed rate {int(rate):,} req/s (oha, CO-corrected)", sec["summary"]))
    if "ttft" in results:
        panels.append(("streaming time to first token (mock ttft included)", results["ttft"]["summary"]))
    if not panels:
        return None
    pw, ph, cols = 420, 260, 2
    rows_n = (len(panels) + cols - 1) // cols
    width, height = pw * cols + 20, ph * rows_n + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="14" y="22" font-size="15" font-weight="bold">Strait proxy benchmark: latency '
           f'percentiles (ms) per contender</text>']
    lx = 14
    for c in CONTENDERS:
        out.append(f'<rect x="{lx}" y="32" width="12" height="12" fill="{COLORS[c]}"/>'
                   f'<text x="{lx + 16}" y="42">{c}</text>')
        lx += 80
    for i, (title, summary) in enumerate(panels):
        ox, oy = 10 + (i % cols) * pw, 55 + (i // cols) * ph
        px0, py0, pww, phh = ox + 45, oy + 25, pw - 70, ph - 65
        vals = [summary.get(c, {}).get(k) for c in CONTENDERS for k, _ in PCTS]
        vmax = max([v for v in vals if v is not None] or [1.0])
        vmax = _nice(vmax * 1.1)
        out.append(f'<text x="{ox + 8}" y="{oy + 14}" font-weight="bold">{_esc(title)}</text>')
        for t in range(5):
            v = vmax * t / 4
            y = py0 + phh - phh * t / 4
            out.append(f'<line x1="{px0}" y1="{y:.1f}" x2="{px0 + pww}" y2="{y:.1f}" stroke="#ddd"/>'
                       f'<text x="{px0 - 4}" y="{y + 4:.1f}" text-anchor="end">{_tick(v)}</text>')
        group_w = pww / len(PCTS)
        bar_w = group_w * 0.8 / len(CONTENDERS)
        for g, (k, label) in enumerate(PCTS):
            gx = px0 + g * group_w + group_w * 0.1
            out.append(f'<text x="{px0 + g * group_w + group_w / 2:.1f}" y="{py0 + phh + 14}" '
                       f'text-anchor="middle">{label}</text>')
            for j, c in enumerate(CONTENDERS):
                v = summary.get(c, {}).get(k)
                if v is None:
                    continue
                h = phh * v / vmax
                x = gx + j * bar_w
                out.append(f'<rect x="{x:.1f}" y="{py0 + phh - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                           f'fill="{COLORS[c]}"><title>{c} {label}: {v:.3f} ms</title></rect>')
        out.append(f'<line x1="{px0}" y1="{py0 + phh}" x2="{px0 + pww}" y2="{py0 + phh}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice(v):
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if v <= step * 4:
            return step * 4
    return v


def _tick(v):
    return f"{v:.2f}".rstrip("0").rstrip(".") if v < 10 else f"{v:.0f}"


def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
