"""Analysis: the paper's token categories over checkpoints, a selected-token HTML view, and plots.

    rho-jax analyze --workdir=DIR [--vocab=PATH] [--reference=MODEL] [--out=DIR]

Categories (Rho-1 §2.1 / App. D): fit a least-squares line to each token's loss over K checkpoints;
ΔL = fitted(last) − fitted(first). ΔL < −0.2 → H→L; ΔL > 0.2 → L→H; otherwise the final loss decides:
≤ the mean final loss over all tokens considered → L→L, else H→H.
"""

from __future__ import annotations

import functools
import html
import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax import objective
from rho_jax.score import token_ce

CATEGORIES = ("H→H", "L→H", "H→L", "L→L")
PAPER_SPLIT = {"H→H": 0.11, "L→H": 0.12, "H→L": 0.26, "L→L": 0.51}
_INT_KEYS = ("tokens", "segment_ids", "positions")


# ---- per-token losses and categories ----

@functools.lru_cache(maxsize=None)
def _ce_fn(cfg, ce_chunk: int):
    def fn(params, batch):
        targets_BxL, valid_BxL = objective.shift_targets(batch["tokens"], batch["segment_ids"])
        ce_BxL, _ = token_ce(cfg, params, batch, targets_BxL, ce_chunk=ce_chunk)
        return jnp.where(valid_BxL, ce_BxL, jnp.nan)

    return jax.jit(fn)


def token_losses(cfg, params_list, examples: dict, batch_size: int = 8, ce_chunk: int = 0) -> np.ndarray:
    """Per-token CE (nats) of each of K param trees on packed examples ([N, L] int arrays).

    Returns f32 [K, N, L], aligned to the prediction position t (target tokens[t+1]); NaN where invalid.
    """
    n = len(examples["tokens"])
    ints = {k: np.asarray(examples[k], np.int32) for k in _INT_KEYS}
    fn = _ce_fn(cfg, ce_chunk)
    out = np.empty((len(params_list), n) + ints["tokens"].shape[1:], np.float32)
    for k, params in enumerate(params_list):
        params = jax.device_put(params)
        for start in range(0, n, batch_size):
            rows = {key: x[start:start + batch_size] for key, x in ints.items()}
            m = len(rows["tokens"])
            batch = {key: np.pad(x, ((0, batch_size - m), (0, 0))) for key, x in rows.items()}  # one shape
            out[k, start:start + m] = np.asarray(fn(params, batch))[:m]
    return out


def loss_delta(losses_KxT: np.ndarray, xs=None) -> np.ndarray:
    """ΔL = fitted(x_last) − fitted(x_first) of a least-squares line per token (column): f64 [T]."""
    y = np.asarray(losses_KxT, np.float64)
    if y.ndim != 2 or y.shape[0] < 2:
        raise ValueError(f"losses must be [K >= 2 checkpoints, T tokens]; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("losses contain NaN/inf; keep only valid positions (finite at every checkpoint)")
    x = np.arange(y.shape[0], dtype=np.float64) if xs is None else np.asarray(xs, np.float64)
    if x.shape != (y.shape[0],) or np.ptp(x) == 0:
        raise ValueError(f"xs must be K={y.shape[0]} distinct values (checkpoint steps or tokens); got {xs}")
    xc = x - x.mean()
    slope = xc @ (y - y.mean(axis=0)) / (xc @ xc)
    return slope * (x[-1] - x[0])


def categorize(losses_KxT: np.ndarray, threshold: float = 0.2, xs=None) -> np.ndarray:
    """The paper's category of each token (column of losses [K checkpoints, T tokens]): str array [T].

    ΔL is rounded to 1e-9 so an exact ±threshold stays in the middle group (the rule is strict)
    despite float rounding in the fit.
    """
    delta = np.round(loss_delta(losses_KxT, xs), 9)
    final = np.asarray(losses_KxT, np.float64)[-1]
    low_final = final <= final.mean()
    return np.where(delta < -threshold, "H→L", np.where(delta > threshold, "L→H",
                                                           np.where(low_final, "L→L", "H→H")))


def category_split(categories) -> dict:
    """{category: fraction} over all four categories (they sum to 1)."""
    cats = np.asarray(categories)
    if cats.size == 0:
        raise ValueError("no tokens to split into categories")
    unknown = set(np.unique(cats)) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; expected {CATEGORIES}")
    return {c: float(np.mean(cats == c)) for c in CATEGORIES}


# ---- selected-token HTML ----

def token_text(tokenizer, token_id: int) -> str:
    """The text of one token: SentencePiece pieces with ▁ as a space (bytes and controls by name);
    other tokenizers decode the id alone (control tokens fall back to their name)."""
    sp = getattr(tokenizer, "sp", None)
    if sp is not None:
        piece = sp.id_to_piece(int(token_id))
        if sp.is_byte(int(token_id)) and piece in ("<0x0A>", "<0x09>"):
            return "\n" if piece == "<0x0A>" else "\t"
        return piece if sp.is_control(int(token_id)) or sp.is_byte(int(token_id)) else piece.replace("▁", " ")
    text = tokenizer.decode([int(token_id)])
    if not text and hasattr(tokenizer, "tok"):
        text = tokenizer.tok.id_to_token(int(token_id)) or ""
    return text or f"<{int(token_id)}>"


def _colour(excess: float, scale: float) -> str:
    """White at 0, red for positive excess (the target lags the reference), blue for negative."""
    t = float(np.clip(excess / scale, -1.0, 1.0))
    end = (214, 39, 40) if t > 0 else (31, 119, 180)
    rgb = [round(255 + abs(t) * (e - 255)) for e in end]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


_CSS = """body{font-family:sans-serif;max-width:70em;margin:2em auto}
.text{font-family:monospace;white-space:pre-wrap;line-height:1.7;border:1px solid #ccc;padding:.6em}
.sel{font-weight:bold;text-decoration:underline;color:#000}.unsel{color:#888}.ctx{color:#444}
.doc{color:#aaa}.bar{display:inline-block;width:16em;height:1em;vertical-align:middle;
background:linear-gradient(to right,rgb(31,119,180),#fff,rgb(214,39,40))}"""


def selected_html(tokenizer, tokens_BxL, segment_ids_BxL, mask_BxL, excess_BxL, path: str,
                  title: str = "Selected tokens", ce_BxL=None, ref_ce_BxL=None) -> str:
    """Writes an HTML page of the rows' text with each target token (tokens[t+1], coloured by the values at
    prediction position t) styled as selected (bold, underlined) or not (grey), on a background coloured by
    excess loss, with a tooltip of excess / ce / ref_ce. Padding is skipped; ¶ marks a new document.
    Returns `path`."""
    tokens, segs = np.asarray(tokens_BxL), np.asarray(segment_ids_BxL)
    mask, excess = np.asarray(mask_BxL, bool), np.asarray(excess_BxL, np.float64)
    _, valid = objective.shift_targets(jnp.asarray(tokens, jnp.int32), jnp.asarray(segs, jnp.int32))
    valid = np.asarray(valid)
    finite = excess[valid & np.isfinite(excess)]
    scale = float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    rows = []
    for b in range(tokens.shape[0]):
        spans = []
        for j in range(tokens.shape[1]):
            if segs[b, j] == 0:
                continue
            if j > 0 and segs[b, j - 1] != 0 and segs[b, j - 1] != segs[b, j]:
                spans.append('<span class="doc">¶\n</span>')
            text = html.escape(token_text(tokenizer, tokens[b, j]))
            t = j - 1  # the prediction position whose target is token j
            if t < 0 or not valid[b, t]:
                spans.append(f'<span class="ctx">{text}</span>')
                continue
            tip = f"excess={excess[b, t]:.3f}"
            tip += f" ce={float(ce_BxL[b][t]):.3f}" if ce_BxL is not None else ""
            tip += f" ref_ce={float(ref_ce_BxL[b][t]):.3f}" if ref_ce_BxL is not None else ""
            cls = "sel" if mask[b, t] else "unsel"
            spans.append(f'<span class="{cls}" style="background:{_colour(excess[b, t], scale)}" '
                         f'title="{html.escape(tip)}">{text}</span>')
        rows.append(f"<h3>row {b}</h3>\n<div class=\"text\">{''.join(spans)}</div>")
    n_sel, n_valid = int((mask & valid).sum()), int(valid.sum())
    legend = (f'<p class="legend">Excess loss (ce − ref_ce): <span>{-scale:.2f}</span> <span class="bar"></span> '
              f'<span>+{scale:.2f}</span> (blue: the model already beats the reference; red: it lags). '
              f'<span class="sel">selected</span> / <span class="unsel">not selected</span> / '
              f'<span class="ctx">context only</span>. {n_sel} of {n_valid} target tokens selected. '
              f'Hover a token for its values.</p>')
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{legend}\n"
            + "\n".join(rows) + "\n</body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


# ---- plots (matplotlib's object API with the Agg canvas: no global backend state) ----

def _figure(path: str, draw, title: str, xlabel: str, ylabel: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _as_runs(rows) -> dict:
    return rows if isinstance(rows, dict) else {"run": rows}


def _series(rows, key, x_keys=("tokens_processed", "step")):
    have = [r for r in rows if isinstance(r.get(key), (int, float))]
    x_key = next((k for k in x_keys if have and all(k in r for r in have)), "step")
    return [r.get(x_key, i) for i, r in enumerate(have)], [r[key] for r in have], x_key


def _plot_lines(runs: dict, key: str, path: str, title: str, ylabel: str, x_keys) -> str:
    lines = {name: _series(rows, key, x_keys) for name, rows in runs.items()}
    lines = {n: s for n, s in lines.items() if s[0]}
    if not lines:
        present = sorted({k for rows in runs.values() for r in rows for k in r})
        raise ValueError(f"no metrics row has {key!r}; keys present: {present}")
    x_key = next(iter(lines.values()))[2]

    def draw(ax):
        for name, (x, y, _) in lines.items():
            ax.plot(x, y, marker="o", markersize=3, label=name)

    return _figure(path, draw, title, x_key.replace("_", " "), ylabel)


def plot_heldout(runs: dict, path: str, key: str = "eval_loss") -> str:
    """Held-out loss vs tokens processed, one line per run ({name: metrics rows})."""
    return _plot_lines(runs, key, path, "Held-out loss", f"{key} (nats/token)", ("tokens_processed", "step"))


def plot_selected_fraction(rows, path: str) -> str:
    """Selected fraction of valid target tokens per logged step (rows, or {name: rows})."""
    return _plot_lines(_as_runs(rows), "selected_fraction", path, "Selected token fraction", "fraction", ("step",))


def plot_selected_vs_unselected(rows, path: str) -> str:
    """Training loss on selected tokens ('loss'), unselected ('loss_unselected') and all ('loss_all')."""
    runs = {k: rows for k in ("loss", "loss_unselected", "loss_all")}
    series = {k: _series(rows, k, ("step",)) for k in runs}
    series = {k: s for k, s in series.items() if s[0]}
    if not series:
        raise ValueError("no metrics row has 'loss' / 'loss_unselected' / 'loss_all'")

    def draw(ax):
        for name, (x, y, _) in series.items():
            ax.plot(x, y, marker="o", markersize=3, label={"loss": "selected (loss)"}.get(name, name))

    return _figure(path, draw, "Training loss: selected vs unselected tokens", "step", "CE (nats/token)")


def plot_categories(split: dict, path: str, paper: dict = PAPER_SPLIT) -> str:
    """Bar chart of the category split next to the paper's."""
    def draw(ax):
        x = np.arange(len(CATEGORIES))
        ax.bar(x - 0.2, [split.get(c, 0.0) for c in CATEGORIES], 0.4, label="ours")
        ax.bar(x + 0.2, [paper[c] for c in CATEGORIES], 0.4, label="Rho-1 paper")
        ax.set_xticks(x, CATEGORIES)

    return _figure(path, draw, "Token categories over checkpoints", "category", "fraction of tokens")


# ---- workdirs ----

def discover_runs(workdir: str) -> dict:
    """{name: run dir} for the workdir itself (if it has metrics.jsonl) or its immediate subdirectories."""
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return {os.path.basename(os.path.normpath(workdir)): workdir}
    subdirs = sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d)))
    return {d: os.path.join(workdir, d) for d in subdirs if os.path.exists(os.path.join(workdir, d, "metrics.jsonl"))}


def checkpoint_steps(run_dir: str) -> list[int]:
    """Complete checkpoint steps under <run>/checkpoints (Orbax writes commit_success.txt last)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(d) for d in os.listdir(root) if d.isdigit() and os.path.exists(os.path.join(root, d, "state")))


def load_checkpoint_params(run_dir: str, step: int, cfg):
    """The params of <run>/checkpoints/<step>/state (a TrainState) as numpy, without its optimizer state."""
    import orbax.checkpoint as ocp

    from rho_jax.model import param_shapes

    target = {"params": param_shapes(cfg)}
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    path = os.path.abspath(os.path.join(run_dir, "checkpoints", str(step), "state"))
    out = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore,
                                                                              partial_restore=True))
    return out["params"]


def _run_config(run_dir: str):
    import ml_collections

    from rho_jax.model import ModelConfig

    with open(os.path.join(run_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(run_dir, "model_config.json")) as f:
        cfg = ModelConfig(**json.load(f))
    return config, cfg


def _run_categories(run_dir: str, rows: int, batch_size: int) -> dict:
    from rho_jax.data.inputs import heldout_dirs, heldout_rows

    config, cfg = _run_config(run_dir)
    steps = checkpoint_steps(run_dir)
    if len(steps) < 2:
        raise ValueError(f"{run_dir} has {len(steps)} checkpoint(s); categories need >= 2")
    # The held-out rows the run evaluates on (config.eval.sources' first), else its training rows.
    dirs = heldout_dirs(config) if config.eval.prepared else {config.data.source: config.data.prepared}
    source, prepared = next(iter(dirs.items()))
    examples = heldout_rows(config, prepared, rows)
    losses = token_losses(cfg, [load_checkpoint_params(run_dir, s, cfg) for s in steps], examples, batch_size)
    flat_KxT = losses.reshape(len(steps), -1)
    flat_KxT = flat_KxT[:, np.all(np.isfinite(flat_KxT), axis=0)]
    return {"steps": steps, "source": source, "rows": int(len(examples["tokens"])), "tokens": int(flat_KxT.shape[1]),
            "split": category_split(categorize(flat_KxT, xs=steps))}


def _run_html(run_dir: str, vocab: str, reference: str, path: str, rows: int, batch_size: int) -> str:
    from rho_jax.data.inputs import heldout_rows
    from rho_jax.data.vocab import demo_vocab_path
    from rho_jax.interop import load_tokenizer
    from rho_jax.loop import load_model

    config, cfg = _run_config(run_dir)
    reference = reference or config.init.reference
    if not reference:
        raise ValueError(f"{run_dir} names no reference model (config.init.reference); pass --reference")
    tokenizer = load_tokenizer(vocab or config.data.vocab or demo_vocab_path())
    if os.path.isdir(os.path.join(run_dir, "final")):
        cfg, params = load_model(os.path.join(run_dir, "final"), "target")
    else:
        params = load_checkpoint_params(run_dir, checkpoint_steps(run_dir)[-1], cfg)
    ref_cfg, ref_params = load_model(reference, "reference")
    examples = heldout_rows(config, config.data.prepared, rows)
    ce = token_losses(cfg, [params], examples, batch_size)[0]
    ref_ce = token_losses(ref_cfg, [ref_params], examples, batch_size)[0]
    valid = np.isfinite(ce) & np.isfinite(ref_ce)
    excess = np.where(valid, ce - ref_ce, 0.0)
    mask = np.asarray(objective.select_topk(jnp.asarray(excess, jnp.float32), jnp.asarray(valid),
                                            float(config.objective.ratio)))
    title = (f"{os.path.basename(run_dir)}: tokens the final model would select (excess loss vs the reference, "
             f"ratio {config.objective.ratio}, top-k over these {len(excess)} rows)")
    return selected_html(tokenizer, examples["tokens"], examples["segment_ids"], mask, excess, path, title,
                         ce_BxL=np.nan_to_num(ce), ref_ce_BxL=np.nan_to_num(ref_ce))


def command(workdir: str, vocab: str = "", reference: str = "", out: str = "", rows: int = 16, html_rows: int = 4,
            batch_size: int = 8) -> int:
    """`rho-jax analyze` (flags parsed by rho_jax.cli): plots from metrics.jsonl, category splits from
    checkpoints, selected-token HTML. Each part that lacks its inputs is skipped with the reason in analysis.json."""
    from rho_jax.config import ConfigError
    from rho_jax.distributed import is_primary
    from rho_jax.metrics import read_metrics

    args = types.SimpleNamespace(workdir=workdir, vocab=vocab, reference=reference, out=out, rows=rows,
                              html_rows=html_rows, batch_size=batch_size)
    runs = discover_runs(args.workdir)
    if not runs:
        raise ConfigError(f"--workdir={args.workdir}: no metrics.jsonl in it or its subdirectories; point --workdir "
                          f"at a training workdir or a demo workdir")
    out = args.out or os.path.join(args.workdir, "analysis")
    primary = is_primary()
    if primary:
        os.makedirs(out, exist_ok=True)
    metrics = {name: read_metrics(d) for name, d in runs.items()}
    report: dict = {"runs": sorted(runs), "paper_split": PAPER_SPLIT, "files": [], "skipped": {}, "categories": {}}

    def attempt(label, fn):
        try:
            result = fn()
            if isinstance(result, str):
                report["files"].append(os.path.relpath(result, out))
            return result
        except Exception as e:  # noqa: BLE001 - one failed part must not cost the others; the reason is reported
            report["skipped"][label] = f"{type(e).__name__}: {e}"
            print(f"WARNING: analyze: skipped {label}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None

    if primary:
        attempt("heldout_loss.png", lambda: plot_heldout(metrics, os.path.join(out, "heldout_loss.png")))
        slm = {n: m for n, m in metrics.items() if any("loss_unselected" in r for r in m)}
        if slm:
            attempt("selected_fraction.png",
                    lambda: plot_selected_fraction(slm, os.path.join(out, "selected_fraction.png")))
        for name, rows in slm.items():
            attempt(f"selected_vs_unselected_{name}.png", lambda: plot_selected_vs_unselected(
                rows, os.path.join(out, f"selected_vs_unselected_{name}.png")))
    for name, run_dir in runs.items():
        cats = attempt(f"categories/{name}", lambda: _run_categories(run_dir, args.rows, args.batch_size))
        if cats:
            report["categories"][name] = cats
            if primary:
                png = os.path.join(out, f"categories_{name}.png")
                attempt(f"categories_{name}.png", lambda: plot_categories(cats["split"], png))
        if primary and any("loss_unselected" in r for r in metrics[name]):  # an SLM run
            html_path = os.path.join(out, f"selected_{name}.html")
            attempt(f"selected_{name}.html", lambda: _run_html(run_dir, args.vocab, args.reference, html_path,
                                                                args.html_rows, args.batch_size))
    if primary:
        with open(os.path.join(out, "analysis.json"), "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


