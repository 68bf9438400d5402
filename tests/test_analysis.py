"""Token categories (the paper's rule), per-token losses, the selected-token HTML, plots and `rho-jax analyze`."""

import html
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rho_jax import analysis, cli
from rho_jax import checkpoint
from rho_jax.checkpoint import Checkpointer
from rho_jax.data.vocab import train_sentencepiece
from rho_jax.losses import heldout_loss
from rho_jax.interop import load_tokenizer
from rho_jax.model import ModelConfig, forward, param_shapes
from rho_jax.train import TrainState

PNG = b"\x89PNG\r\n\x1a\n"
fwd = jax.jit(forward, static_argnums=0)


def line(start, delta, k=5):
    """Losses over k checkpoints on an exact line from `start` with fitted(end) - fitted(start) = delta."""
    return start + delta * np.arange(k) / (k - 1)


def test_categorize_follows_the_paper_rule_with_strict_boundaries():
    cols = [line(2.0, -0.5), line(1.0, 0.5), line(1.0, -0.2), line(3.0, 0.2), line(0.5, 0.0), line(4.0, 0.1)]
    losses_KxT = np.stack(cols, axis=1)
    final = losses_KxT[-1]  # 1.5, 1.5, 0.8, 3.2, 0.5, 4.1 -> mean 1.9333
    assert final.mean() == pytest.approx(11.6 / 6)
    # ΔL exactly -0.2 / +0.2 is neither H→L nor L→H; it falls to the final-loss test.
    assert analysis.categorize(losses_KxT).tolist() == ["H→L", "L→H", "L→L", "H→H", "L→L", "H→H"]
    wide = analysis.categorize(losses_KxT, threshold=0.6)
    assert wide.tolist() == ["L→L", "L→L", "L→L", "H→H", "L→L", "H→H"]


def test_loss_delta_is_the_least_squares_fit_not_the_endpoints():
    rng = np.random.default_rng(0)
    losses_KxT = rng.uniform(0, 5, (6, 40))
    xs = np.array([0, 100, 250, 400, 800, 1000])
    want = [np.polyval(np.polyfit(xs, y, 1), xs[-1]) - np.polyval(np.polyfit(xs, y, 1), xs[0]) for y in losses_KxT.T]
    np.testing.assert_allclose(analysis.loss_delta(losses_KxT, xs), want, rtol=1e-9)
    # A token whose endpoints differ by -0.3 but whose fitted line is flat is not H→L.
    y = np.array([[1.3], [0.5], [1.0], [1.5], [1.0]])
    assert analysis.loss_delta(y)[0] == pytest.approx(0.16)
    assert analysis.categorize(np.concatenate([y, y + 1], axis=1))[0] == "L→L"


def test_categorize_rejects_nan_and_single_checkpoint():
    with pytest.raises(ValueError, match="valid positions"):
        analysis.categorize(np.array([[1.0, np.nan], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="K >= 2"):
        analysis.categorize(np.ones((1, 3)))


def test_category_split_fractions_sum_to_one():
    split = analysis.category_split(np.array(["H→L", "L→L", "L→L", "H→H"]))
    assert split == {"H→H": 0.25, "L→H": 0.0, "H→L": 0.25, "L→L": 0.5}
    assert sum(analysis.PAPER_SPLIT.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown categories"):
        analysis.category_split(["H->L"])


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_positions=32)
    rng = np.random.default_rng(0)
    make = lambda: jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),  # noqa: E731
                                param_shapes(cfg))
    return cfg, [make(), make()]


def packed_rows(vocab, seed=1):
    """Two rows of 12: two documents then padding, and one full document."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab, (2, 12)).astype(np.int32)
    segs = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12], np.int32)
    tokens[segs == 0] = 0
    pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0], list(range(12))], np.int32)
    return {"tokens": tokens, "segment_ids": segs, "positions": pos}


def test_token_losses_match_manual_ce_and_nan_where_invalid(tiny):
    cfg, params_list = tiny
    ex = packed_rows(cfg.vocab_size)
    got = analysis.token_losses(cfg, params_list, ex, batch_size=3)  # a padded last batch
    assert got.shape == (2, 2, 12) and got.dtype == np.float32
    valid = np.zeros((2, 12), bool)
    valid[0, [0, 1, 2, 3, 5, 6, 7]] = True  # row 0: the last token of each document predicts nothing
    valid[1, :11] = True
    for k, params in enumerate(params_list):
        logits = np.asarray(fwd(cfg, params, ex["tokens"], ex["positions"], ex["segment_ids"]), np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        want = -np.take_along_axis(logp[:, :-1], ex["tokens"][:, 1:, None], -1)[..., 0]
        np.testing.assert_allclose(got[k][:, :-1][valid[:, :-1]], want[valid[:, :-1]], rtol=2e-5)
        assert np.all(np.isnan(got[k][~valid]))
        assert heldout_loss(cfg, params, ex, batch_size=3) == pytest.approx(float(np.nanmean(got[k])), rel=1e-5)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["The cat sat on the mat. 3 + 4 = 7 apples <b> & \"quotes\"", "Question: How many?\nAnswer: 12"] * 5
    return load_tokenizer(train_sentencepiece(texts, 300, tmp_path_factory.mktemp("spm") / "tiny.model"))


def test_selected_html_escapes_text_and_marks_selection(tokenizer, tmp_path):
    ids = tokenizer.encode("The cat <b> & \"mat\"")
    n = len(ids)
    tokens = np.array([ids + [0, 0]], np.int32)
    segs = np.array([[1] * n + [0, 0]], np.int32)
    excess = np.linspace(-1, 1, n + 2)[None]
    mask = np.zeros((1, n + 2), bool)
    mask[0, [0, 2]] = True
    ce, ref = excess + 2.0, np.full_like(excess, 2.0)
    path = analysis.selected_html(tokenizer, tokens, segs, mask, excess, str(tmp_path / "sel.html"), "T <&>",
                                  ce_BxL=ce, ref_ce_BxL=ref)
    page = open(path, encoding="utf-8").read()
    body = page.split("</h1>", 1)[1]
    for i in ids:
        assert html.escape(analysis.token_text(tokenizer, i)) in body
    assert "<b>" not in body and "&lt;" in body and "&amp;" in body and "T &lt;&amp;&gt;" in page
    assert body.count('class="sel" style=') == 2  # the selected targets
    assert body.count('class="unsel" style=') == n - 1 - 2  # the other targets (n tokens, n - 1 targets)
    assert 'title="excess=-1.000 ce=1.000 ref_ce=2.000"' in page
    assert "Excess loss" in page and 'class="bar"' in page and "linear-gradient" in page


def test_token_text_uses_pieces_with_spaces(tokenizer):
    ids = tokenizer.encode("The cat sat")
    assert "".join(analysis.token_text(tokenizer, i) for i in ids).strip() == "The cat sat"


def test_plots_are_png(tmp_path):
    clm = [{"step": s, "tokens_processed": 64 * s, "eval_loss": 5.0 - 0.1 * s, "loss": 5.0} for s in range(1, 6)]
    slm = [{"step": s, "tokens_processed": 64 * s, "eval_loss": 5.0 - 0.2 * s, "loss": 4.0, "loss_all": 4.5,
            "loss_unselected": 5.0, "selected_fraction": 0.6} for s in range(1, 6)]
    paths = [analysis.plot_heldout({"clm": clm, "slm": slm}, str(tmp_path / "h.png")),
             analysis.plot_selected_fraction(slm, str(tmp_path / "f.png")),
             analysis.plot_selected_vs_unselected(slm, str(tmp_path / "u.png")),
             analysis.plot_categories(dict(zip(analysis.CATEGORIES, (0.1, 0.2, 0.3, 0.4))), str(tmp_path / "c.png"))]
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG and len(data) > 1000
    with pytest.raises(ValueError, match="no metrics row has 'gsm8k'"):
        analysis.plot_heldout({"clm": clm}, str(tmp_path / "x.png"), key="gsm8k")


def test_checkpoint_params_restore_without_optimizer_state(tiny, tmp_path):
    cfg, (params, other) = tiny
    tx = optax.adamw(1e-3)
    ckpt = Checkpointer(str(tmp_path), every=1, async_save=False)
    for step, p in ((2, params), (5, other)):
        state = TrainState(step=jnp.int32(step), params=p, opt_state=tx.init(p), rng=jax.random.PRNGKey(0))
        ckpt.save(step, state, {"input": {}})
    ckpt.close()
    assert checkpoint.kept_steps(str(tmp_path)) == [2, 5]
    got = checkpoint.restore_params(str(tmp_path), 5, cfg)
    jax.tree.map(np.testing.assert_array_equal, got, other)


def test_analyze_main_on_metrics_only_workdir(tmp_path, capsys):
    """A demo workdir of run subdirectories: plots from metrics.jsonl; parts without inputs are skipped."""
    for name, extra in (("clm", {}), ("slm", {"loss_unselected": 5.0, "selected_fraction": 0.6})):
        (tmp_path / name).mkdir()
        rows = [{"step": s, "tokens_processed": 64 * s, "eval_loss": 5.0 - 0.1 * s, "loss": 4.0, **extra}
                for s in range(1, 4)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["rho-jax", "analyze", f"--workdir={tmp_path}"]) == 0
    report = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["runs"] == ["clm", "slm"]
    assert set(report["files"]) == {"heldout_loss.png", "selected_fraction.png", "selected_vs_unselected_slm.png"}
    assert {"categories/clm", "categories/slm", "selected_slm.html"} <= set(report["skipped"])
    assert (tmp_path / "analysis" / "heldout_loss.png").read_bytes()[:8] == PNG
