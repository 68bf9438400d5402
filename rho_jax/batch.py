"""The packed batch every stage passes around: int32 arrays [B, L] (or [L] for one row) keyed by INPUT_KEYS.

  tokens       token ids
  segment_ids  1, 2, ... per packed document in the row; 0 = padding (no attention, no target)
  positions    position of each token within its document (RoPE), restarting at 0 per document

Prepared rows (rho_jax.data.rows) store exactly these, the model reads them, and the step adds
`ref_ce` / `ref_entropy` (float32 [B, L]) in SLM modes that score with a reference.
"""

INPUT_KEYS = ("tokens", "segment_ids", "positions")
