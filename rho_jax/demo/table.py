"""The demo's summary as text: the per-arm table (mean ± std over seeds), the paired differences against
CLM, the FLOPs per stage, and the headline and 'where SLM does not win' sentences, all from the summary."""

from __future__ import annotations

from rho_jax.demo.stats import excludes_zero
from rho_jax.demo.summary import HIGHER_BETTER

LABELS = {"clm": "CLM", "slm": "SLM", "random": "random", "document": "SLM-document",
          "reference_only": "reference-only", "clm_matched_flops": "CLM at SLM's FLOPs"}


def fmt(v, spec=".4f") -> str:
    """A table cell: ints with thousands separators, floats by `spec`, None as "not reached"."""
    if v is None:
        return "not reached"
    return f"{v:,}" if isinstance(v, int) else format(v, spec)


def fmt_stat(st: dict, spec=".4f") -> str:
    """mean ± std over seeds; a value the same in every seed as one number."""
    if st["mean"] is None:
        return "n/a"
    if st["std"] == 0:
        return format(st["mean"], spec)
    return f"{format(st['mean'], spec)} ± {format(st['std'], spec)}"


def fmt_interval(p: dict, spec="+.4f") -> str:
    if p["mean"] is None:
        return "n/a"
    ci = "" if p["lo"] is None else f" [{format(p['lo'], spec)}, {format(p['hi'], spec)}]"
    return f"{format(p['mean'], spec)}{ci}"


def _label(s: dict, k: str) -> str:
    if k == "final_heldout_loss":
        return f"final held-out loss ({s['heldout_source']})"
    if k.startswith("final_eval_loss/"):
        return f"final held-out loss ({k.split('/')[-1]})"
    if k.endswith("_accuracy"):
        t = k[:-len("_accuracy")]
        return f"{t} few-shot accuracy (n={s['few_shot_n'].get(t)})"
    if k.endswith("_answer_nll"):
        t = k[:-len("_answer_nll")]
        return f"{t} answer NLL (nats per problem, n={s.get('answer_n', {}).get(t)})"
    return {"final_solution_loss": "GSM8K-100 solution loss", "tokens_processed": "processed tokens",
            "tokens_selected": "selected tokens", "flops": "FLOPs per run", "wall_s": "wall time (s)"}.get(k, k)


def _spec(k: str) -> str:
    return {"flops": ".3g", "wall_s": ".0f", "tokens_processed": ",.0f", "tokens_selected": ",.0f"}.get(
        k, ".3f" if k in HIGHER_BETTER else ".4f")


def table_rows(s: dict) -> list[tuple[str, ...]]:
    """(label, one cell per arm): mean ± std over the seeds."""
    keys = [k for k in next(iter(s["per_arm"].values())) if k != "steps"]
    return [(_label(s, k), *(fmt_stat(s["per_arm"][a][k], _spec(k)) for a in s["arms"])) for k in keys]


def _md(header: list[str], rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _per_seed(vals, spec=".2f") -> str:
    return ", ".join(fmt(v, spec) for v in vals)


def reach_sentence(s: dict, arm: str) -> str:
    """The headline: tokens (X) and FLOPs (Y) for `arm` to reach CLM's final held-out loss."""
    r, n, name = s["reach"][arm], len(s["seeds"]), LABELS[arm]
    xs = [v["token_fraction"] for v in r["per_seed"].values()]
    ys = [v["compute"]["y"] for v in r["per_seed"].values()]
    if not r["reached"]:
        return f"{name} does not reach CLM's final held-out {s['heldout_source']} loss in any of {n} seeds."
    cost = ("counting the reference training and the scoring" if r["uses_reference"]
            else "it needs no reference")
    return (f"{name} reaches CLM's final held-out {s['heldout_source']} loss in {r['reached']} of {n} seeds, with "
            f"X = {fmt_stat(r['token_fraction'], '.2f')}x CLM's processed tokens (per seed: {_per_seed(xs)}) and "
            f"Y = {fmt_stat(r['y'], '.2f')}x CLM's FLOPs, {cost} (per seed: {_per_seed(ys)}).")


def proportions_sentence(s: dict) -> str:
    """The one-off costs of SLM in units of one CLM run, and Y = X + r + s per seed at the demo's numbers."""
    p, r = s["proportions"], s["reach"].get("slm")
    text = (f"Proportions: the reference's training costs r = {p['reference_x_clm']:.3f}x one CLM run's FLOPs and "
            f"scoring the rows the runs read s = {p['scoring_x_clm']:.3f}x (the paper: about 0.03 and 0.33), so "
            f"with SLM's step costing CLM's, Y = X + r + s = X + {p['reference_x_clm'] + p['scoring_x_clm']:.3f}.")
    if r and r["reached"]:
        pairs = [f"{v['compute']['flops'] / v['compute']['clm_flops']:.3f} + {p['reference_x_clm']:.3f} + "
                 f"{p['scoring_x_clm']:.3f} = {v['compute']['y']:.3f}"
                 for v in r["per_seed"].values() if v["compute"]["y"] is not None]
        text += " Per seed (X in FLOPs + r + s = Y): " + "; ".join(pairs) + "."
    return text


def leakage_sentence(s: dict) -> str:
    lk = s["leakage"]
    roles = ", ".join(f"{k} {v}" for k, v in lk["problems"].items())
    return (f"Leakage check: {lk['shared_problems']} CHAMP problems shared between the reference's clean set, the "
            f"noisy corpus and the held-out set (problems per set, from the files their preparations read: {roles}).")


def matched_sentence(s: dict) -> str:
    parts = [f"{LABELS[a]} ran {m['flops']:.3g} FLOPs for SLM's {m['target']:.3g} (run + reference + scoring), "
             f"{m['mismatch']:+.1%} (whole steps)" for a, m in s["matched"].items()]
    return ("FLOPs matching: " + "; ".join(parts) + ".") if parts else ""


def diff_sentence(s: dict, arm: str, key: str = "final_heldout_loss") -> str:
    p = s["paired"][arm][key]
    return (f"{LABELS[arm]} - CLM, {_label(s, key)}: {fmt_interval(p)} (mean [95% t-interval] of {p['n']} "
            f"paired seeds; per seed: {_per_seed(p['diffs'], '+.4f')}).")


def not_won(s: dict, arm: str = "slm") -> list[str]:
    """Every reported comparison `arm` does not win against CLM: a worse or equal mean, a 95% interval that
    includes 0, not reaching CLM's loss, or more FLOPs (Y > 1)."""
    out, name = [], LABELS[arm]
    for k, p in s["paired"][arm].items():
        if p["mean"] is None:
            continue
        better = p["mean"] > 0 if k in HIGHER_BETTER else p["mean"] < 0
        if not better:
            out.append(f"{_label(s, k)}: {name} - CLM = {fmt_interval(p)} ({'tie' if p['mean'] == 0 else 'worse'})")
        elif not excludes_zero(p):
            out.append(f"{_label(s, k)}: {name} - CLM = {fmt_interval(p)} (ahead, but the interval includes 0)")
    r = s["reach"][arm]
    if r["reached"] < len(s["seeds"]):
        out.append(f"CLM's final held-out loss reached in {r['reached']} of {len(s['seeds'])} seeds only")
    y = r["y"]["mean"]
    if y is not None and y >= 1:
        sf, clm = s["stage_flops"], s["per_arm"]["clm"]["flops"]["mean"]
        out.append(f"compute: Y = {y:.2f} >= 1, more FLOPs than CLM: the reference training alone is "
                   f"{sf['reference']['flops'] / clm:.2f}x a CLM run and the scoring "
                   f"{sf['scoring']['flops'] / clm:.2f}x")
    return out


def flops_rows(s: dict) -> list[tuple[str, str, str, str]]:
    """(stage, FLOPs, tokens, x one CLM run) for the shared stages and a run of each arm (mean over seeds)."""
    clm = s["per_arm"]["clm"]["flops"]["mean"]
    sf = s["stage_flops"]
    rows = [(name, f"{v['flops']:.3g}", f"{v['tokens']:,}", f"{v['flops'] / clm:.2f}")
            for name, v in (("base", sf["base"]), ("reference training", sf["reference"]),
                            (f"scoring, the {sf['scoring']['rows']:,} rows the runs read (in Y)", sf["scoring"])) if v]
    sc = sf["scoring"]
    if sc.get("rows_scored", sc["rows"]) != sc["rows"]:
        rows.append((f"scoring job, whole prepared shards: {sc['rows_scored']:,} rows (not in Y)",
                     f"{sc['flops_job']:.3g}", f"{sc['rows_scored'] * sc['tokens'] // max(sc['rows'], 1):,}",
                     f"{sc['flops_job'] / clm:.2f}"))
    for a in s["arms"]:
        f, t = s["per_arm"][a]["flops"]["mean"], s["per_arm"][a]["tokens_processed"]["mean"]
        rows.append((f"{LABELS[a]} run (each seed)", f"{f:.3g}", f"{int(t):,}", f"{f / clm:.2f}"))
    return rows


def table_text(s: dict) -> str:
    """The markdown tables and the headline sentences (the terminal shows them too)."""
    others = [a for a in s["arms"] if a != "clm"]
    lines = [f"Seeds {', '.join(map(str, s['seeds']))}: every cell is mean ± std over them.", ""]
    lines += _md(["", *(LABELS[a] for a in s["arms"])], table_rows(s)) + [""]
    keys = list(s["paired"][others[0]]) if others else []
    lines += _md(["paired by seed", *(f"{LABELS[a]} - CLM" for a in others)],
                 [(_label(s, k), *(fmt_interval(s["paired"][a][k], "+.3f" if k in HIGHER_BETTER else "+.4f")
                                   for a in others)) for k in keys]) + [""]
    lines += [leakage_sentence(s), "", proportions_sentence(s), ""] if "leakage" in s else []
    lines += [reach_sentence(s, a) for a in others] + [""]
    co = [k for k in keys if k == "final_heldout_loss" or k.startswith("final_eval_loss/")]  # co-headlines
    lines += [diff_sentence(s, a, k) for k in co for a in others]
    lines += ["", matched_sentence(s)] if s.get("matched") else []
    for a in [x for x in others if x in ("slm", "document")]:
        lost = not_won(s, a)
        lost = "; ".join(lost) if lost else "nowhere in these numbers"
        lines += ["", f"Where {LABELS[a]} does not win: {lost}."]
    return "\n".join(lines)
