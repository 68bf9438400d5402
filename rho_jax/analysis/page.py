"""The selected-token page: packed rows as text, each target token styled as selected or not by SLM's
top-k over the excess loss (target CE − reference CE), on a background coloured by that excess."""

from __future__ import annotations

import html

import jax.numpy as jnp
import numpy as np

from rho_jax import ce as ce_lib, objective
from rho_jax.losses import token_losses


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
    _, valid = ce_lib.shift_targets(jnp.asarray(tokens, jnp.int32), jnp.asarray(segs, jnp.int32))
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



def selection_page(tokenizer, target: tuple, reference: tuple, examples: dict, ratio: float, path: str,
                   title: str, batch_size: int = 8) -> str:
    """`selected_html` of packed examples ({tokens, segment_ids, positions}: [N, L]) with the tokens SLM's
    top-k (`ratio` of the valid targets of all N rows at once) selects by excess loss: the target's CE
    minus the reference's, each model a (ModelConfig, params) pair. Returns `path`."""
    (cfg, params), (ref_cfg, ref_params) = target, reference
    ce_NxL = token_losses(cfg, [params], examples, batch_size)[0]
    ref_ce_NxL = token_losses(ref_cfg, [ref_params], examples, batch_size)[0]
    valid_NxL = np.isfinite(ce_NxL) & np.isfinite(ref_ce_NxL)
    excess_NxL = np.where(valid_NxL, ce_NxL - ref_ce_NxL, 0.0)
    mask_NxL = np.asarray(objective.select_topk(jnp.asarray(excess_NxL, jnp.float32), jnp.asarray(valid_NxL), ratio))
    return selected_html(tokenizer, examples["tokens"], examples["segment_ids"], mask_NxL, excess_NxL, path, title,
                         ce_BxL=np.nan_to_num(ce_NxL), ref_ce_BxL=np.nan_to_num(ref_ce_NxL))
