"""The training loop's inner loop: step, read metrics one step late; the periodic actions (log and `on_log`,
evaluate, save, stop on a preemption or a non-finite loss).

`loop.set_up` builds everything (config, models, mesh, resume, input), `loop.open_workdir` the metrics writer,
and `loop.run` hands over to `StepLoop.run`.
"""

from __future__ import annotations

import time
from typing import Callable

import jax

from rho_jax import flops, losses, train


class NonFiniteLossError(RuntimeError):
    pass


class StepLoop:
    """The step loop without a per-step host sync. Step n+1 is dispatched, and its batch read and copied
    to the device, before step n's metrics are read, so the host never idles the device. The NaN check
    and the counters read each step's metrics in order, one step late: a non-finite step (whose update
    the step itself already skipped) is found after the next step was dispatched, which is discarded.
    Steps that save, evaluate, end the run or answer a preemption are boundaries: their metrics are read
    before anything else is dispatched, so a checkpoint only ever holds steps known to be finite, with the
    input state and counters of exactly that step."""

    def __init__(self, config, trainer, batches, checkpointer, writer, counters, heldout, preempt,
                 on_log: Callable[[dict], None] | None = None):
        """`on_log(row)` is called with each metrics row as it is written (after metrics.jsonl has it)."""
        self.config, self.tc, self.trainer, self.batches = config, config.train, trainer, batches
        self.checkpointer, self.writer, self.counters, self.heldout = checkpointer, writer, counters, heldout
        self.preempt, self.on_log = preempt, on_log
        self.batch_tokens = self.tc.batch_size * config.data.seq_len
        self.flops_per_step = self.batch_tokens * sum(trainer.stage_flops.values())
        self.row: dict = {}
        self.last_eval: dict = {}
        self.t_last, self.steps_since = time.perf_counter(), 0

    def _eval_now(self, step: int) -> bool:
        return bool(self.heldout) and (step % self.config.eval.every == 0 or step == self.tc.steps)

    def run(self, state, step: int):
        """Steps from `step` to config.train.steps (or a preemption). Returns (state, step, last row)."""
        tc, batches = self.tc, self.batches
        batch = self.trainer.global_batch(next(batches)) if step < tc.steps else None
        pending = None  # (step, metrics as device arrays) dispatched but not yet read
        while step < tc.steps:
            state, metrics = self.trainer.train_step(state, batch)  # asynchronous: the device runs it
            step += 1
            preempted = self.preempt.requested or self.checkpointer.reached_preemption(step)
            if not (preempted or self._boundary(step)):
                batch = self.trainer.global_batch(next(batches))  # the next batch, while step `step` runs
                if pending is not None:
                    self._finish(*pending)  # waits for the previous step only
                pending = (step, metrics)
                continue
            if pending is not None:  # a boundary: every step up to this one is read before going on
                self._finish(*pending)
            pending = None
            self._finish(step, metrics, state.params)
            if self._periodic(state, step, preempted):
                break
            if step < tc.steps:
                batch = self.trainer.global_batch(next(batches))
        return state, step, self.row

    def _boundary(self, step: int) -> bool:
        """Steps read before anything else is dispatched: the last, a save, an evaluation."""
        return step == self.tc.steps or self.checkpointer.should_save(step) or self._eval_now(step)

    def _periodic(self, state, step: int, preempted: bool) -> bool:
        """The actions at a boundary step, once its metrics are read (and logged, with eval): the save at the
        interval, at the end or on a preemption. True when the run stops here (preempted, the save complete)."""
        checkpointer = self.checkpointer
        if preempted:
            print(f"preemption requested: saving a checkpoint at step {step}", flush=True)
        if checkpointer.should_save(step) or step == self.tc.steps or preempted:
            meta = {"input": self.batches.get_state(), "counters": self.counters.to_dict()}
            checkpointer.save(step, state, meta, eval_loss=self.last_eval.get("eval_loss"),
                              force=step == self.tc.steps or preempted)
        if preempted:
            checkpointer.wait()
            print(f"preempted: saved checkpoint at step {step} in {checkpointer.directory}; exiting cleanly",
                  flush=True)
        return preempted

    def _finish(self, step: int, metrics, params=None) -> None:
        """Reads step `step`'s metrics: NaN policy, exact counters, the log row (with eval when `params`)."""
        tc = self.tc
        metrics = self.trainer.read_metrics(metrics)
        if not metrics["finite"]:
            self._non_finite(step, metrics)
        self.counters.tokens_processed += self.batch_tokens
        self.counters.tokens_selected += int(metrics["n_selected"])
        self.counters.add_step(self.trainer.stage_flops, self.batch_tokens)
        self.steps_since += 1
        eval_now = params is not None and self._eval_now(step)
        if not (step % tc.log_every == 0 or step == tc.steps or eval_now):
            return
        dt = time.perf_counter() - self.t_last
        row = dict(metrics)
        row.update(self.counters.to_dict(), tokens_per_s=self.steps_since * self.batch_tokens / dt,
                   lr=float(train.learning_rate_schedule(tc)(step - 1)))
        mfu = flops.mfu(self.steps_since * self.flops_per_step / dt, jax.device_count(), self.trainer.peak)
        if mfu is not None:
            row["mfu"] = mfu
        if eval_now:
            self.last_eval = self._evaluate(params)
            row.update(self.last_eval)
        self.row = self.writer.write(step, row)
        if self.on_log is not None:
            self.on_log(self.row)
        self.t_last, self.steps_since = time.perf_counter(), 0  # eval time never counts as training time

    def _evaluate(self, params) -> dict:
        c = self.config
        out = {f"eval_loss/{name}": losses.heldout_loss(self.trainer.spec.model, params, ex, c.eval.batch_size,
                                                        c.objective.ce_chunk) for name, ex in self.heldout.items()}
        if out:
            out["eval_loss"] = next(iter(out.values()))
        return out

    def _non_finite(self, step: int, metrics: dict) -> None:
        if self.tc.nan_policy != "stop":
            print(f"WARNING: non-finite loss or gradient at step {step}: update skipped (nan_policy='skip')",
                  flush=True)
            return
        checkpointer = self.checkpointer
        self.writer.write(step, metrics)
        checkpointer.wait()  # the last good checkpoint is complete before we report it
        last = checkpointer.latest_step()
        checkpointer.close()
        self.writer.close()
        kept = (f"the last good checkpoint (step {last} in {checkpointer.directory}) is kept"
                if last is not None else "no checkpoint had been written yet")
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} (loss={metrics['loss']}, grad_norm="
            f"{metrics['grad_norm']}); the update was not applied and {kept}. "
            f"Set config.train.nan_policy='skip' to skip such updates instead.")

