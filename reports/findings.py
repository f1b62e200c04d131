"""docs/findings.md: the claims C1-C6 of Stoehr et al. 2024 judged on one real run (a thin page writer).

`python -m reports.findings RUN_DIR --out docs/findings.md [--figures docs/figures/findings]` reads only the
run's tables (and RUN_DIR/sweep.yaml and run.json). The claims are judged by reports/claims/ (each claim one
small definition) through one engine (reports/engine.py) into verdicts; this module only writes them down, with a
figure per claim (reports/findings_figures.py). Every number on the page is written by `fmt` from a value the
claims computed from the tables, so the same run always gives the same bytes (tests/test_findings.py regenerates
the committed page and compares).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.budget import BUDGET_S, DESIGN, Missing, missing_for
from reports.claims import evaluate
from reports.claims.common import MIN_REPLICATES, min_replicates_justification
from reports.engine import ClaimResult, Outcome, Threshold, UnitVerdict, interval
from reports.findings_figures import draw
from reports.run import (
    FLIP,
    IDENTITY_COLUMNS,
    KL,
    LD,
    LD_AFTER,
    MIRROR,
    NEAR_CHANCE,
    SHIFT,
    Run,
    load_run,
    measured,
    options_text,
)
from reports.searches import SearchRow, search_rows
from reports.stats import BOOTSTRAP_SAMPLES, CONFIDENCE, MAX_UNDEFINED
from reports.text import fmt
from reports.units import UnitRow, pooled_test, unit_rows
from storage.errors import StorageError
from storage.selection import describe_rule

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("Stoehr, Du, Snæbjarnarson, West, Cotterell and Schein (2024), *Activation Scaling for Steering and "
         "Interpreting Language Models*, arXiv 2410.04962")
VERDICTS = tuple(o.value for o in Outcome)


def general_thresholds(run: Run) -> list[Threshold]:
    """The thresholds every claim shares."""
    return [
        Threshold("CONFIDENCE", CONFIDENCE, "every interval: two-sided percentile interval of the two-level bootstrap",
                  f"{fmt(BOOTSTRAP_SAMPLES)} draws per interval, so each end rests on "
                  f"{fmt(round(BOOTSTRAP_SAMPLES * (1 - CONFIDENCE) / 2))} draws; a statistic undefined in more than "
                  f"{fmt(100 * MAX_UNDEFINED)}% of the draws gets no interval"),
        Threshold("MIN_REPLICATES", MIN_REPLICATES, "every claim: an interval entering a verdict rests on at least "
                  "this many replicates (the trial and its re-trainings) per side", min_replicates_justification()),
        Threshold("NEAR_CHANCE", NEAR_CHANCE, "C1, C3: a unit whose base accuracy is below this (or whose warnings say "
                  "near chance) is listed apart, as is one whose selected trial never reaches min_flip on val",
                  "chance is 0.5 for two answers; a model below 0.6 barely does the task, so a swap of its "
                  "preference is not the behaviour the claims are about"),
    ]


# --- markdown ----------------------------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["(no rows: the run has no such units)"]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def shown_path(path: Path) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(ROOT).as_posix()
    except ValueError:
        return full.as_posix()


def _verdicts(run: Run, claims: list[ClaimResult], lacking: list[Missing] | None) -> list[str]:
    models = run.models
    header = ["claim", "what"] + [f"verdict on `{m}`" for m in models]
    if len(models) > 1:
        header.append("models agree")
    header += ["why", "what would resolve the inconclusive units"]
    rows = []
    for c in claims:
        verdicts = [c.verdict(m) for m in models]
        row = [c.key, c.title] + [f"**{v}**" for v in verdicts]
        if len(models) > 1:
            row.append("yes" if len(set(verdicts)) == 1 else "no: " + "; ".join(
                f"`{m}` {v}" for m, v in zip(models, verdicts)))
        row.append("; ".join((f"`{m}`: " if len(models) > 1 else "") + c.reason(m) for m in models))
        resolves = dict.fromkeys(x.resolve for u in c.units for x in u.conditions
                                 if x.outcome == Outcome.INCONCLUSIVE and x.resolve and u.outcome == Outcome.INCONCLUSIVE)
        if not c.units:  # nothing to judge: what the run lacks to have a unit of this claim
            needs = [m.name for m in lacking or [] if m.makes_units and c.key in m.judged]
            resolves = dict.fromkeys([f"a unit with what this run lacks: {', '.join(needs)} (below: {UNMEASURED})"]
                                     if needs else [])
        row.append("; ".join(resolves) or "-")
        rows.append(row)
    return table(header, rows)


UNMEASURED = "What this run could not measure"


def _unmeasured(run: Run, lacking: list[Missing] | None) -> list[str]:
    """What the run's budget left out of the full design, and which claims each part would measure."""
    design = shown_path(DESIGN)
    wall = (f"The sweep took {fmt(run.wall_s)} s" if run.wall_s == run.wall_s and run.wall_s else
            "The sweep's wall time is not recorded")
    heading = [f"## {UNMEASURED}", ""]
    if lacking is None:
        return heading + [f"{wall}. This run's stored sweep could not be compared with `{design}` (the file is "
                          "absent, or the stored sweep is one the present schema does not read).", ""]
    if not lacking:
        return heading + [f"{wall}. This run has the main features of `{design}`.", ""]
    return heading + [
        f"{wall}; `make findings` (the sweep, the patching baseline and this page) is budgeted at {fmt(BUDGET_S)} s "
        f"on this project's 2-core CPU for both models. The full design, `{design}` (for a cluster or a GPU; "
        f"`actscale plan {design}` prices it), has the main features that follow beside this run: each would add "
        "units to the verdicts of the claims named or measure them better, and no verdict on this page rests on "
        "it.", ""] + table(["what the full design has", "full design", "this run", "claims"],
                           [[m.feature, m.design, m.run, m.claims_text()] for m in lacking]) + [""]


def _method(run: Run) -> list[str]:
    clusters = []
    for (model, label), g in run.selected.groupby(["model", "label"], sort=False):
        n_prompts, n_clusters = pooled_test(run, run.replicates(str(g.trial_id.iloc[0])))
        named = f"{label} on `{model}`" if run.several_models else str(label)
        clusters.append(f"{named}: {fmt(n_clusters)} clusters over {fmt(n_prompts)} test prompts")
    return [
        "## How the numbers are made", "",
        f"- Each unit (model, task, site, method) is shown by its selected trial: {_rule(run.min_flip)}. Its "
        "replicates are the same hyper-parameters trained again (with other seeds, and on other folds where the "
        "run has folds).",
        f"- Every interval that enters a verdict is a {fmt(100 * CONFIDENCE)}% percentile interval of a two-level "
        f"bootstrap ({fmt(BOOTSTRAP_SAMPLES)} draws, a fixed seed per item; reports/stats.py): the replicates of each "
        "trial compared are resampled, then the prompt clusters within them: the task's grouping key "
        "(predictions.cluster where the run has it; here the first entity of each test example: the name pair of "
        "an IOI prompt, the country a capital prompt asks about), so that prompts about the same entities count "
        "once. Trials on the same test prompts share each draw of clusters (a paired comparison; seed replicates "
        "on one split); trials on other prompts draw their own. This run: " + "; ".join(clusters) + ".",
        "- A condition is *supported* when its interval clears its threshold on the claim's side, *not supported* "
        "when it clears it on the other side, and *inconclusive* when it straddles it, when the quantity is not "
        "measured, or when fewer than MIN_REPLICATES replicates stand behind it. An inconclusive condition is "
        "never counted as a failure; the page says what would resolve it: the prompt clusters or replicates at "
        "which the interval's half-width (it shrinks as 1 / sqrt(n)) would fall below the distance to the "
        "threshold, from the observed variance of each level (the bootstrap over clusters alone and over "
        "replicates alone), or the feature that would measure it.",
        "- A unit is supported when all its conditions are, not supported when any is not, inconclusive otherwise. "
        "A claim, judged per model over its units: supported (all supported), not supported (all not supported), "
        "mixed (some of each), inconclusive (otherwise).",
        f"- Units whose model is near chance (units.base_accuracy < {fmt(NEAR_CHANCE)}, or their warnings say so) or "
        "whose selected trial never reaches min_flip on val (selected_by = 'fallback') are listed apart and kept "
        "out of C1 and C3.",
        _design(run), ""]


def _design(run: Run) -> str:
    """What the replicates are (trials.replicate_kind and fold where the run has them)."""
    t = run.trials
    kinds = sorted(str(k) for k in t.replicate_kind.dropna().unique()) if measured(t, "replicate_kind") else ["seed"]
    folds = int(t.fold.nunique()) if measured(t, "fold") else 1
    if folds > 1:
        return (f"- The replicates of this run are {' and '.join(kinds)} replicates over {fmt(folds)} folds: the "
                "prompt sets of different folds draw their clusters apart, so the intervals hold the split's "
                "variance too.")
    return (f"- The replicates of this run are {' and '.join(kinds)} replicates on one fixed split (no folds): every "
            "interval is conditional on that split, and the selected trial was chosen on the same val prompts it is "
            "then compared on beside other trials.")


IDENTITY_LABELS = {"train_dtype": "trained in", "eval_dtype": "evaluated in"}


def _search_text(search: dict[str, Any], train: dict[str, Any]) -> str:
    """The search and replicates as the stored sweep set them: sampler, trials, pruner, ranges, what replicates vary."""
    pruner = search.get("pruner") or {}
    kept = f", at least {fmt(pruner['min_kept'])} going on at each rung" if pruner.get("min_kept", 1) > 1 else ""
    ranked = f", ranked at a rung by `{pruner['rank']}`" if pruner.get("rank") else ""
    pruned = (f", pruned by ASHA (first rung {fmt(pruner.get('min_steps'))} steps, eta {fmt(pruner.get('eta', 3))}"
              f"{kept}{ranked})" if pruner.get("kind") == "asha" else "")

    def ranges(space: dict[str, Any]) -> str:
        return ", ".join(f"{k} [{fmt(v.get('low'))}, {fmt(v.get('high'))}]" for k, v in space.items()
                         if isinstance(v, dict) and "low" in v)
    spaces = [f"ranges {ranges(search.get('space') or {})}"] + [
        f"{method}: {ranges(space)}" for method, space in (search.get("method_space") or {}).items()]
    data = search.get("replicate_data", "none")
    folds = int(train.get("folds", 1) or 1)
    again = (f"trained on each of {fmt(folds)} cross-fitted entity folds (its own trial seed on each)"
             if data == "folds" else "trained again on bootstrap resamples of the train split" if data == "bootstrap"
             else "trained again with other seeds on the same split")
    return (f"`{search.get('sampler', 'n/a')}`, {fmt(search.get('n_trials'))} trials per unit (each unit its own "
            f"sampler seed){pruned}; {'; '.join(spaces)}; then the selected trial's hyper-parameters {again}, "
            f"{fmt(search.get('replicates'))} replicates in all")


def _rule(min_flip: float) -> str:
    return describe_rule(min_flip).replace(f"{min_flip:g}", fmt(min_flip), 1)


def _setting(run: Run) -> list[str]:
    u, cfg = run.units, run.config
    search, train = cfg.get("search") or {}, cfg.get("train") or {}
    lines = ["## Where this run differs from the paper", "",
             "The paper studies GPT-2 and Pythia models on its own IOI and country-capital conflict prompt sets, with "
             "its own hyper-parameters. This run:", ""]
    for m in u.drop_duplicates("model").itertuples(index=False):
        identity = [f"{IDENTITY_LABELS.get(c, c.removeprefix('model_'))} {getattr(m, c)}" for c in IDENTITY_COLUMNS
                    if measured(u, c) and getattr(m, c) is not None]
        lines.append(f"- model `{m.model}` ({fmt(int(m.n_layers))} layers, d_model {fmt(int(m.d_model))}, revision "
                     f"`{m.model_revision}`{'; ' + ', '.join(identity) if identity else ''});")
    for (model, label), g in u.groupby(["model", "label"], sort=False):
        first = g.iloc[0]
        lines.append(f"- task {label} on `{model}`: this project's templates (options: "
                     f"{options_text(first.task_options, fmt)}); prompts per split train {fmt(int(g.n_train.min()))}, "
                     f"val {fmt(int(g.n_val.min()))}, test {fmt(int(g.n_test.min()))}, kept by the filter "
                     f"`{train.get('filter', 'n/a')}`; before any intervention `{model}` ranks the answer first on a "
                     f"share {fmt(float(first.base_accuracy))} of the task's prompts;")
    missing = run.units[~run.units.unit_id.isin(run.selected.unit_id)]
    lines += [f"- sites {', '.join(f'`{s}`' for s in dict.fromkeys(u.site))}; methods "
              f"{', '.join(f'`{m}`' for m in dict.fromkeys(u.method))};",
              f"- training: {fmt(train.get('steps'))} steps of batch {fmt(train.get('batch_size'))}, L1 "
              f"`{train.get('l1', 'subgradient')}`; search: {_search_text(search, train)};",
              f"- {fmt(int((run.selected.selected_by == 'fallback').sum()))} of {fmt(len(run.selected))} units had no "
              "trial reaching min_flip on val and are shown by their fallback trial;",
              f"- {fmt(len(missing))} of {fmt(len(u))} units have no complete search trial, so no selected trial"
              + (": " + "; ".join(f"{r.label} / {r.site} / {r.method}" for r in missing.itertuples()) if len(missing)
                 else "") + ";",
              f"- {fmt(int(sum(len(w) > 0 for w in u.warnings)))} of {fmt(len(u))} units carry warnings "
              "(units.warnings: small splits, a model near chance; `actscale report` lists them);",
              f"- wall time {fmt(run.wall_s)} s, from {run.wall_source}.", ""]
    return lines


def _units(rows: list[UnitRow]) -> list[str]:
    lines = ["## Every unit", "",
             "What each unit's selected trial does to its test prompts, over its replicates and prompt clusters: LD "
             "(no intervention: the logit of the answer minus the target's), LD' (intervened), the normalised shift "
             "(LD - LD') / (2 LD) (1: the preference exactly mirrored), |LD' + LD| (how far from that mirror), the "
             "share of prompts whose target becomes the top-1 token, flip_rate and kl_other.", ""]
    body = []
    for r in rows:
        top1 = fmt(r.top1) if r.top1 is not None else "not measured (needs trials.test_top1_b)"
        body.append([r.unit, r.method, f"{r.trial.rsplit('-', 1)[-1]} ({r.selected_by})", r.apart or "-",
                     f"{fmt(r.n_prompts)} ({fmt(r.n_clusters)})", fmt(r.replicates)]
                    + [interval(r.values[m]) for m in (LD, LD_AFTER, SHIFT, MIRROR)] + [top1]
                    + [interval(r.values[m]) for m in (FLIP, KL)])
    return lines + table(["unit", "method", "selected trial", "listed apart", "test prompts (clusters) over replicates",
                          "replicates",
                          "LD", "LD'", "(LD - LD') / (2 LD)", "|LD' + LD|", "top-1 target", "test flip_rate",
                          "test kl_other"], body) + [""]


def _thresholds(run: Run, claims: list[ClaimResult]) -> list[str]:
    every = general_thresholds(run) + [t for c in claims for t in c.thresholds]
    return ["## Thresholds", "", "Each with why its value is not below the noise this run can resolve.", ""] + table(
        ["constant", "value", "rule", "why this value"],
        [[f"`{t.name}`", fmt(t.value), t.rule, t.justification] for t in every]) + [""]


def _claim_table(units: list[UnitVerdict]) -> list[str]:
    rows = []
    for u in units:
        for i, c in enumerate(u.conditions):
            why = f"{c.outcome}" + (f": {c.why}" if c.why else "")
            rows.append([u.unit if i == 0 else "", c.name, c.shown or "n/a", c.rule, why,
                         f"**{u.outcome}**" if i == 0 else ""])
    return table(["unit", "measured", "value [95% interval]", "rule", "outcome", "unit verdict"], rows)


def _open_items(units: list[UnitVerdict]) -> list[str]:
    """One line per reason an item is inconclusive and what resolves it, naming every item it holds for."""
    groups: dict[tuple[str, str], list[str]] = {}
    for u in units:
        for x in u.conditions:
            if x.outcome == Outcome.INCONCLUSIVE and x.resolve:
                groups.setdefault((x.why, x.resolve), []).append(f"{u.unit}, {x.name}")
    return [f"- {'; '.join(items)}: {why}; resolves with {resolve}." for (why, resolve), items in groups.items()]


def _claim(c: ClaimResult, run: Run, link: str) -> list[str]:
    lines = [f"## {c.key}: {c.title}", "", f"*Claim.* {c.statement}", "", f"*Measured.* {c.items}", "",
             f"*Rule.* {c.rule}", ""]
    lines += _claim_table(c.units) + [""]
    notes = [f"- {u.unit}: {n}" for u in c.units for n in u.notes]
    if notes:
        lines += ["*Beside the rule* (measured, not judged):", ""] + notes + [""]
    open_items = _open_items(c.units)
    if open_items:
        lines += ["*Inconclusive, and what would resolve it:*", ""] + open_items + [""]
    if c.apart:
        lines += ["*Listed apart* (not judged here):", ""] + [f"- {a}" for a in c.apart] + [""]
    if c.extra:
        lines += c.extra + [""]
    lines += [f"![{c.key}: figure]({link}/{c.key.lower()}.png)", ""]
    if "maps" in c.figure and len(c.figure["maps"]):
        lines += [f"![{c.key}: the scalars beside the patching map]({link}/{c.key.lower()}-maps.png)", ""]
    if len(run.models) == 1:
        m = run.models[0]
        lines += [f"**Verdict {c.key}: {c.verdict(m)}** ({c.reason(m)}).", ""]
    else:
        verdicts = {m: c.verdict(m) for m in run.models}
        agree = "the models agree" if len(set(verdicts.values())) == 1 else "the models disagree"
        lines += [f"**Verdict {c.key}: " + "; ".join(f"`{m}` {v}" for m, v in verdicts.items()) + f"** ({agree}: "
                  + "; ".join(f"`{m}` {c.reason(m)}" for m in run.models) + ").", ""]
    return lines


def render(run_dir: Path, page: Path, figures: Path, write_figures: Path | None = None) -> str:
    """The page for `run_dir` as it will live at `page` with its figures in `figures` (the links are relative);
    the PNGs are written to `write_figures` (default: `figures`)."""
    run = load_run(Path(run_dir), fmt)
    command = (f"python -m reports.findings {shown_path(run_dir)} --out {shown_path(page)} "
               f"--figures {shown_path(figures)}")
    return render_run(run, page, figures, write_figures, f"Written by `{command}` from run `{run.run_id}` (git "
                      f"revision {', '.join(f'`{r}`' for r in run.revisions)}) in `{shown_path(run_dir)}`.")


def render_run(run: Run, page: Path, figures: Path, write_figures: Path | None = None, source: str = "") -> str:
    """The page for a run already read (reports.run.load_run or assemble); `source` says where it comes from."""
    out_dir = Path(write_figures or figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    link = Path(os.path.relpath(os.path.abspath(figures), os.path.abspath(Path(page).parent))).as_posix()
    claims = evaluate(run)
    lacking = missing_for(run.config)
    for c in claims:
        draw(c, out_dir / f"{c.key.lower()}.png")
    models = ", ".join(f"`{m}`" for m in run.models)
    lines = [f"# Findings: the claims of Stoehr et al. (2024) on {models}", "",
             "<!-- generated by reports/findings.py from a run's tables: do not edit by hand -->", "",
             f"> **Generated; do not edit by hand.** {source} Every number on this page comes from that run's tables; "
             "tests/test_findings.py regenerates the page and compares.", "",
             f"The paper: {PAPER}. For each of its claims C1 to C6 this page says what is measured, the rule on the "
             "intervals' bounds, the evidence, a figure and a verdict, judged by reports/claims/ through one engine "
             "(reports/engine.py). A claim is only supported or not supported where the intervals clear their "
             "thresholds; otherwise it is inconclusive, and the page says what would resolve it.", "",
             "## Verdicts", ""]
    lines += _verdicts(run, claims, lacking) + [""]
    lines += _method(run) + _setting(run) + _unmeasured(run, lacking) + _units(unit_rows(run)) + _thresholds(run, claims)
    for c in claims:
        lines += _claim(c, run, link)
    lines += _searches(search_rows(run))
    return "\n".join(lines).rstrip("\n") + "\n"


def _searches(rows: list[SearchRow]) -> list[str]:
    lines = ["## Each unit's search", "",
             "Every search trial of every unit shown above: the hyper-parameters its unit's sampler drew (each unit has "
             "its own sampler seed), how far it trained (a pruned trial stopped at an ASHA rung; its val scores are "
             "those at that step), its val flip_rate, kl_other and (complete trials) moved share, whether it "
             "is on the unit's val front (complete and not dominated on the three), and the selected trial.", ""]
    body = [[r.unit, r.trial, r.status, fmt(r.lambda_faith), fmt(r.lambda_min), fmt(r.lr), fmt(r.val_flip),
             fmt(r.val_kl), fmt(r.moved_share), "yes" if r.on_front else "-", "**selected**" if r.selected else "-"]
            for r in rows]
    return lines + table(["unit", "trial", "trained", "lambda_faith", "lambda_min", "lr", "val flip_rate",
                          "val kl_other", "moved share", "val front", "selected"], body) + [""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.findings",
                                     description="Write docs/findings.md (the paper's claims judged) from a run.")
    parser.add_argument("run_dir", type=Path, help="a finished run directory (RUN_DIR/tables)")
    parser.add_argument("--out", type=Path, default=Path("docs/findings.md"), help="the page to write")
    parser.add_argument("--figures", type=Path, default=None,
                        help="the folder of its PNG figures (default: figures/<page name> beside the page)")
    args = parser.parse_args(argv)
    figures = args.figures or args.out.parent / "figures" / args.out.stem
    try:
        page = render(args.run_dir, args.out, figures)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out} and its figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
