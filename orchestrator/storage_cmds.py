"""`actscale query` (and, when present, `actscale report`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from storage.errors import StorageError


def register(sub) -> None:
    p = sub.add_parser("query", help="run SQL over one or several run directories (DuckDB)")
    p.add_argument("args", nargs="+", metavar="RUN_DIR... SQL", help="run directories, then the SQL")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print CSV")
    out.add_argument("--json", action="store_true", help="print JSON records")
    out.add_argument("--parquet", metavar="OUT", help="write the answer to a Parquet file")
    p.set_defaults(func=cmd_query)
    register_report(sub)


def cmd_query(args: argparse.Namespace) -> int:
    from storage.query import run_sql

    if len(args.args) < 2:
        raise StorageError("usage: actscale query RUN_DIR [RUN_DIR...] \"SQL\"")
    *dirs, sql = args.args
    frame, problems = run_sql([Path(d) for d in dirs], sql)
    if args.parquet:
        frame.to_parquet(args.parquet, index=False)
        print(f"wrote {len(frame)} rows to {args.parquet}")
    elif args.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif args.json:
        sys.stdout.write(frame.to_json(orient="records") + "\n")
    else:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(frame.to_string(index=False) if len(frame) else f"(no rows; columns: {', '.join(frame.columns)})")
    for problem in problems:
        print(f"actscale: error: refused {problem}", file=sys.stderr)
    return 2 if problems else 0


def register_report(sub) -> None:
    p = sub.add_parser("report", help="figures, an HTML page and a Markdown summary from one or several runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report of the first run)")
    p.add_argument("--trial", help="report this trial instead of each unit's selected trial")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from reports.report import FIGURE_KEYS, render
    from storage.query import check_run_dirs

    dirs = check_run_dirs([Path(d) for d in args.run_dirs])
    out = Path(args.out) if args.out else dirs[0] / "report"
    made = render(dirs, out, args.trial)
    n = sum(len(made[k]) for k in FIGURE_KEYS)
    print(f"report: {out / 'index.html'}  ({n} figures; summary in {out / 'summary.md'})")
    return 0
