#!/usr/bin/env python
"""Turn a benchmark JSON (tools/benchmark.py) into the README's performance table.

    python tools/perf_table.py out/bench_ops.json --readme README.md

replaces the text between ``<!-- perf:ops:begin -->`` and ``<!-- perf:ops:end -->`` (or prints
the table when ``--readme`` is not given).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def fmt_params(p) -> str:
    if isinstance(p, dict):
        return ", ".join(f"{k}={v}" for k, v in p.items())
    return str(p)


def table(rows: list[dict]) -> str:
    lines = ["| op | params | threads | ours | ms | peer | peer ms | speedup |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        peer_ms = "" if r.get("peer_median_ms") is None else f"{r['peer_median_ms']:.2f}"
        speed = "" if r.get("speedup") is None else f"{r['speedup']:.2f}×"
        lines.append(f"| {r.get('op', r.get('bench'))} | {fmt_params(r.get('params', ''))} | {r.get('threads', '')} | "
                     f"{r['impl']} | {r['median_ms']:.2f} | {r.get('peer', '')} | {peer_ms} | {speed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=Path)
    ap.add_argument("--readme", type=Path)
    ap.add_argument("--section", default="ops")
    args = ap.parse_args(argv)
    doc = json.loads(args.json.read_text())
    text = table(doc["rows"])
    if args.readme is None:
        print(text)
        return 0
    begin, end = f"<!-- perf:{args.section}:begin -->", f"<!-- perf:{args.section}:end -->"
    readme = args.readme.read_text()
    if begin not in readme or end not in readme:
        print(f"{args.readme} has no {begin} ... {end} markers", file=sys.stderr)
        return 1
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", readme, flags=re.S)
    args.readme.write_text(new)
    print(f"updated {args.readme} ({len(doc['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
