"""accel-dra benchmarks: the real plugin and exporter processes, the sim API server, the fake 8-GPU backend.

    python hack/bench/run.py [--quick] [--out DIR] [--only NAME ...]

Writes ``<out>/<host>-<date>.json`` and ``<out>/latest.json`` (``-quick`` in both names for ``--quick``) and
prints the targets table. docs/performance.md describes every figure and what limits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import harness as h
from benchlib import report
from benchlib import scenarios as sc
from benchlib.report import judge, table

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
SCENARIOS = (
    "prepare_1gpu",
    "prepare_8gpu",
    "claim_get",
    "churn",
    "batch",
    "start_to_slice",
    "steady_state",
    "health_change",
    "explain_scale",
)
CLUSTER_FREE = {"explain_scale"}  # scenarios that need no plugin or exporter processes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hack/bench/run.py", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (small counts; figures are rough)")
    size.add_argument(
        "--smoke", action="store_true", help="every measurement once, tiny (tests; figures meaningless)"
    )
    parser.add_argument("--out", default=str(REPO / "hack" / "bench" / "results"), help="where the JSON goes")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these measurements")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every plugin/exporter process with py-spy (dev extra) into DIR/<process>.txt (collapsed "
        "stacks; figures measured while profiling are skewed)",
    )
    parser.add_argument(
        "--cdi-on-disk",
        action="store_true",
        help="keep the CDI directory on the disk instead of a tmpfs (nodes have /var/run/cdi on tmpfs)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (process logs) for inspection"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        action="append",
        default=[],
        help="also run the prepare/unprepare measurements with the plugin of this git revision (extracted "
        "with git archive), run by run alternating with this tree; repeatable",
    )
    parser.add_argument(
        "--doc",
        metavar="FILE",
        help="write the prepare ratios (and the comparison with --baseline) into FILE between the "
        f"{report.DOC_BEGIN!r} and {report.DOC_END!r} lines (docs/performance.md)",
    )
    return parser.parse_args(argv)


def _git() -> JSON:
    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": run("rev-parse", "HEAD"),
        "dirty": bool(run("status", "--porcelain", "--untracked-files=no")),
    }


async def _health_change(cluster: h.Cluster, dirs: h.Dirs, sizes: sc.Sizes) -> JSON:
    if not sc.health_change_supported():
        return {
            "measurable": False,
            "slice_updates": None,
            "why": "no `accel-dra sim inject` in this tree yet",
        }
    from benchlib.health import health_change

    result: JSON = await health_change(cluster, dirs, sizes)
    return result


async def _explain_scale(dirs: h.Dirs, sizes: sc.Sizes) -> JSON:
    from benchlib.explain import cel_domain_lookup, explain_scale

    directory = dirs.root / "explain"
    directory.mkdir()
    result = await asyncio.to_thread(explain_scale, directory, sizes.explain_nodes, sizes.explain_runs)
    result["cel_us_per_evaluation"] = cel_domain_lookup()
    return result


async def run(args: argparse.Namespace) -> JSON:
    sizes = sc.Sizes.smoke() if args.smoke else sc.Sizes.quick() if args.quick else sc.Sizes.full()
    dirs = h.make_dirs(args.cdi_on_disk)
    cluster = h.Cluster(dirs)
    chosen = args.only or SCENARIOS
    if set(chosen) - CLUSTER_FREE:
        cluster.start()
    trees = [h.CURRENT_TREE] + [h.extract_tree(REPO, rev, dirs.root / "trees") for rev in args.baseline]
    steps: dict[str, Callable[[], Awaitable[JSON]]] = {
        "prepare_1gpu": lambda: sc.prepare_latency(cluster, dirs, 1, sizes.latency_calls, sizes, trees=trees),
        "prepare_8gpu": lambda: sc.prepare_latency(
            cluster, dirs, 8, sizes.latency_calls_8, sizes, trees=trees
        ),
        "claim_get": lambda: sc.claim_get_latency(cluster, dirs, 500 if mode == "full" else 20),
        "churn": lambda: sc.churn(cluster, dirs, sizes.churn_claims),
        "batch": lambda: sc.batch(cluster, dirs, sizes.batch_claims),
        "start_to_slice": lambda: sc.start_to_slice(cluster, dirs, sizes.start_runs),
        "steady_state": lambda: sc.steady_state(cluster, dirs, sizes),
        "health_change": lambda: _health_change(cluster, dirs, sizes),
        "explain_scale": lambda: _explain_scale(dirs, sizes),
    }
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    results: JSON = {}
    started = time.time()
    machine = h.machine(dirs)
    try:
        for name in SCENARIOS:
            if name in chosen:
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                t = time.perf_counter()
                results[name] = await steps[name]()
                print(f"[bench] {name} done in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
        if args.keep:
            print(f"[bench] work directory kept: {dirs.root}", file=sys.stderr)
        else:
            h.remove_dirs(dirs)
    return {
        "schema": 1,
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "loadavg_at_end": list(os.getloadavg()),
        "machine": machine,
        "git": _git(),
        "sizes": vars(sizes),
        "results": results,
        "targets": judge(results),
    }


def write(document: JSON, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if document["mode"] == "full" else f"-{document['mode']}"
    stamp = document["started"].replace("-", "").replace(":", "")
    path = out / f"{document['machine']['host']}-{stamp}{suffix}.json"
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    path.write_text(text)
    (out / f"latest{suffix}.json").write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        h.PROFILE_DIR = Path(args.profile).resolve()
        h.PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    document = asyncio.run(run(args))
    path = write(document, Path(args.out))
    if args.doc:
        report.write_doc(
            Path(args.doc), document, str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
        )
    print(table(document["targets"]))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
