"""Draw a ``streaming.py`` result as a PNG: CPU seconds per GB sent and time to first frame
(p95) against the number of viewers, one line per server (issue 18, target 7).

    python bench/chart.py bench/results/streaming-scale.json bench/results/fanout-rtmp.png

Needs matplotlib (``pip install 'arcly-stream[bench]'``; ``make bench-chart`` does it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def series(results: list[dict[str, Any]], kind: str, figure: str
           ) -> dict[str, list[tuple[int, float]]]:
    """Per server, (viewers, figure) sorted by viewers, for one kind of run."""
    found: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        value = result["figures"].get(figure)
        if result["kind"] == kind and isinstance(value, int | float):
            found.setdefault(result["server"], []).append((result["count"], float(value)))
    return {server: sorted(points) for server, points in sorted(found.items())}


def draw(data: dict[str, Any], out: Path, kind: str = "fanout-rtmp") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    results = data["results"]
    fig, (cpu, ttff) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    counts: set[int] = set()
    for axis, figure, label in ((cpu, "cpu_s_per_gb", "server CPU s per GB sent"),
                                (ttff, "ttff_ms_p95", "time to first frame, p95 (ms, log)")):
        for server, points in series(results, kind, figure).items():
            xs, ys = zip(*points, strict=True)
            counts.update(xs)
            axis.plot(xs, ys, marker="o", label=server)
        axis.set_xlabel("viewers of one stream")
        axis.set_ylabel(label)
        axis.set_xscale("log")
        axis.set_xticks(sorted(counts), [str(c) for c in sorted(counts)])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
    cpu.set_ylim(bottom=0)
    ttff.set_yscale("log")
    cpu.legend()
    fig.suptitle(f"{kind} on {data.get('cpus', '?')} cores, {data.get('when', '')} "
                 f"(joins at {data.get('rate', '?')}/s; lower is better)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a streaming.py JSON result")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--kind", default="fanout-rtmp")
    opts = parser.parse_args()
    draw(json.loads(opts.results.read_text()), opts.out, opts.kind)


if __name__ == "__main__":
    main()
