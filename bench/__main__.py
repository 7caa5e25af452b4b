"""``python -m bench [--quick] [--only submit,webhook] [--repeats 3]``: run, print, write tables."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import ROOT, BenchEnv, Figure, checkout_before
from connector.devkafka import DevKafka

SCENARIOS = ("ceilings", "policy", "submit", "webhook", "latency", "budget", "state")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(figures: list[Figure], header: str) -> str:
    lines = [
        header,
        "",
        "| scenario | figure | median | spread (min–max) | n | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for f in figures:
        low, high = f.spread
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        name = f"{f.name} ({f.unit})" + (f" — {f.note}" if f.note else "")
        lines.append(
            f"| {f.scenario} | {name} | {_fmt(f.median)} | {_fmt(low)}–{_fmt(high)} | "
            f"{len(f.values)} | {f.target or ''} | {met} |"
        )
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run the connector of this git revision (submit, webhook): before/after "
        "ratios from the same run",
    )
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    broker = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        broker = DevKafka(tmp / "kafka", port=0)
        await broker.start()
        bootstrap = broker.bootstrap_servers
    env = BenchEnv(bootstrap, tmp, repeats=1 if args.quick else args.repeats, quick=args.quick)
    if broker is not None:
        env.extras["broker"] = broker
    if args.before:
        try:
            env.extras["before"] = checkout_before(args.before, tmp)
            env.extras["before_rev"] = args.before
        except subprocess.CalledProcessError as exc:  # e.g. a shallow clone
            print(f"--before {args.before}: not in this clone ({exc.stderr.decode().strip()});"
                  " no before/after figures")  # fmt: skip
    figures: list[Figure] = []
    failed: list[str] = []
    started = time.monotonic()
    try:
        for name in chosen:
            module = importlib.import_module(f"bench.{name}")
            print(f"\n== {name} ==", flush=True)
            t0 = time.monotonic()
            try:
                got: list[Figure] = await module.run(env)
            except Exception as exc:  # the other scenarios' figures still count
                failed.append(f"{name}: {exc}")
                print(f"  {name} FAILED: {exc!r}", flush=True)
                continue
            figures.extend(got)
            for f in got:
                print(
                    f"  {f.name}: {_fmt(f.median)} {f.unit}  (runs: "
                    f"{', '.join(_fmt(v) for v in f.values)})",
                    flush=True,
                )
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        if broker is not None:
            await broker.stop()
    header = (
        f"# Benchmark results\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.node()}, {len(__import__('os').sched_getaffinity(0))} cores, Python "
        f"{platform.python_version()}; {'quick' if args.quick else f'{env.repeats} repeats'}; "
        f"total {time.monotonic() - started:.0f} s. Medians of the repeats; ratios are "
        "computed inside the same run."
        + (f" Before/after: against {args.before}." if "before" in env.extras else "")
        + "".join(f"\n\n**Failed, no figures:** {line}" for line in failed)
    )
    table = markdown(figures, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(table)
    (args.out / "latest.json").write_bytes(
        orjson.dumps([f.to_json() for f in figures], option=orjson.OPT_INDENT_2)
    )
    print("\n" + table)
    print(f"written: {args.out / 'latest.md'} and latest.json")
    if failed:
        raise SystemExit(f"failed scenarios: {'; '.join(failed)}")


if __name__ == "__main__":
    asyncio.run(main())
