"""Merge the result files of several `launch/evaluate.py` runs of one checkpoint into one
markdown table and one quality-against-NFE plot (the tables of BASELINES.md).

  python benchmarks/merge_evals.py --plot=out.png workdir/eval_0008000_nfe.json \
      workdir/eval_0008000_nfe1000.json ...

A later row replaces an earlier one of the same solver, steps and sample count; with
`--rerun=SOLVER,...` a later file's rows of those solvers replace all their earlier rows at that
sample count, in their place (a solver re-run after a fix, at other steps); other rows are kept
in file order (new solvers, NFE budgets and sample counts are added after them).
Columns: the quality metrics present in any row, as `mean ± std` where the row has repeated
draws, and the sampling seconds. Prints the table; with --plot also writes the plot
(diffjax.train.evaluate.save_nfe_plot; the metric given by --metric, default its first of fid,
fd_classifier, sw_pixels) of the rows at the most common sample count, so that one plot
compares like with like.
"""

from __future__ import annotations

import argparse
import collections
import json

from diffjax.train.evaluate import save_nfe_plot

METRICS = ("fid", "fd_classifier", "kid", "precision", "recall", "sw_pixels")


def merge(files: list[str], rerun: tuple[str, ...] = ()) -> list[dict]:
    rows: list[dict] = []
    for name in files:
        with open(name) as f:
            groups: dict[tuple, list[dict]] = {}
            for row in json.load(f)["rows"]:
                steps = None if row["solver"] in rerun else row["steps"]
                groups.setdefault((row["solver"], row["num"], steps), []).append(row)
        for (solver, num, steps), group in groups.items():
            at = [
                i for i, r in enumerate(rows)
                if (r["solver"], r["num"]) == (solver, num) and steps in (None, r["steps"])
            ]  # fmt: skip
            rows = [r for i, r in enumerate(rows) if i not in at]
            place = at[0] if at else len(rows)
            rows[place:place] = group
    return rows


def markdown(rows: list[dict]) -> str:
    keys = [k for k in METRICS if any(k in r for r in rows)]
    lines = ["| solver | steps | NFE | samples | " + " | ".join(keys) + " | seconds |"]
    lines.append("|---" * (len(keys) + 5) + "|")
    for r in rows:
        cells = []
        for k in keys:
            v, sd = r.get(k), r.get(f"{k}_std")
            cells.append("" if v is None else f"{v:.4g}" + ("" if sd is None else f" ± {sd:.2g}"))
        lines.append(
            f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['num']} | "
            + " | ".join(cells)
            + f" | {r.get('seconds', 0.0):.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="eval_<step>[_<tag>].json files, earliest first")
    p.add_argument("--plot", default="", help="write the quality-against-NFE plot here")
    p.add_argument("--metric", default=None, help="the plotted row key")
    p.add_argument("--rerun", default="", help="comma-separated solvers re-run in later files")
    args = p.parse_args(argv)
    rows = merge(args.files, tuple(filter(None, args.rerun.split(","))))
    print(markdown(rows))
    if args.plot:
        common = collections.Counter(r["num"] for r in rows).most_common(1)[0][0]
        print(save_nfe_plot(args.plot, [r for r in rows if r["num"] == common], args.metric))


if __name__ == "__main__":
    main()
