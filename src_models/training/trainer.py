"""The training loop shared by every method.

Anytime training: a semi-supervised method first runs a supervised warm-up of the networks
it predicts with (:meth:`Method.warmup_step`) for ``warmup`` of the budget (a share of the
wall-clock budget when it is in minutes, of the iterations otherwise; optionally ended
earlier when its loss stops falling, :mod:`src_models.training.warmup`), then its own step,
which sees the rest of the run as its whole run (its iteration counter and schedules start
at 0 there). With the interpolation prior on (:class:`SliceSampler`), the prior's weight
falls linearly from 1 to ``prior_final`` over the method's own part, as its pseudo-labels
take over.

Budget in iterations or wall-clock minutes; the method's own lr schedule applied each
iteration; seeded and reproducible on the CPU; a :class:`Progress` event per iteration to a
callback; cooperative pause/resume/stop via :class:`TrainingControl`; periodic and final
checkpoints written atomically; resumable; a NaN/inf loss stops the run with a clear message
and restores the last good weights (whose checkpoint stays on disk).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from src_models.data.sampler import SliceSampler
from src_models.errors import CheckpointError, NonFiniteLossError, SemisegError
from src_models.files import atomic_write
from src_models.training import distributed
from src_models.training.checkpoint import ModelBundle, save_model
from src_models.training.control import TrainingControl
from src_models.training.fit import HAND_BACK_DROP, labeled_fit, plane_fits
from src_models.training.prior_refresh import refresh_prior
from src_models.training.threads import ThreadGovernor
from src_models.training.warmup import LossPlateau

LOG_FILE = "train_log.jsonl"


@dataclass
class TrainConfig:
    """How long and how to train (the method's own hyperparameters live in its Config)."""

    iterations: int = 2000  #: iteration budget (the total, counting from 0)
    minutes: float | None = None  #: wall-clock budget; when set it replaces ``iterations``
    batch_size: int = 8
    patch_size: int = 128
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 250  #: iterations between checkpoints (0: only at the end)
    #: also checkpoint once this many seconds of training passed since the last one (0: off);
    #: the plugin uses it so a crash loses at most that much of a slow model's training
    checkpoint_seconds: float = 0.0
    #: share of the budget for the supervised warm-up of semi-supervised methods (0: none;
    #: 1: only the plateau rule ends it)
    warmup: float = 0.4
    #: with > 0, the warm-up also ends once the supervised loss improves by less than this
    #: share from one window of iterations to the next (0: off, the default)
    warmup_plateau: float = 0.0
    #: weight of the interpolation prior at the end of a semi-supervised run (1: no decay)
    prior_final: float = 0.5
    #: share of the budget after which the prior's targets become the fused, smoothed
    #: prediction, once (:mod:`src_models.training.prior_refresh`; 0: never)
    prior_refresh: float = 0.0
    #: on the CPU, fit torch's threads (at most as many as at the start) to the cores other
    #: programs leave free, at the start and every 20 s (:mod:`src_models.training.threads`);
    #: off by default so that a library call keeps the caller's threads (the recipe turns
    #: it on for the CLI, the plugin and the benchmarks)
    adapt_threads: bool = False


@dataclass
class Progress:
    """One training event. ``total`` is an estimate when the budget is in minutes."""

    iteration: int
    total: int
    elapsed: float
    eta: float
    lr: float
    logs: dict[str, float] = field(default_factory=dict)
    done: bool = False
    message: str = ""


def _estimate_total(
    config: TrainConfig,
    done: int,
    start: int,
    elapsed: float,
    phase: tuple[int, float] | None = None,
) -> int:
    """The iterations a run will reach. With a minutes budget: the iterations done plus the
    rate of the current phase (``phase`` = its first iteration and training seconds; the
    method's own steps are slower than the warm-up's) times the seconds left."""
    if config.minutes is None:
        return config.iterations
    left = max(0.0, config.minutes * 60 - elapsed)
    # the current phase's rate once it has 3 steps, else the whole run's
    for first, since in ([phase] if phase is not None else []) + [(start, 0.0)]:
        if done - first >= 3 and elapsed > since:
            return max(done + 1, done + int((done - first) / (elapsed - since) * left))
    return max(done + 1, config.iterations if config.iterations else done + 1)


def train(
    bundle: ModelBundle,
    data: SliceSampler,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    callback: Callable[[Progress], None] | None = None,
    control: TrainingControl | None = None,
) -> ModelBundle:
    """Train ``bundle.method`` from ``bundle.iteration`` up to the budget.

    Resuming: pass a bundle loaded with :func:`load_model`; its iteration, optimiser states
    and RNG states continue where they stopped. Stopping early (``control.stop()``) saves a
    checkpoint and returns normally with ``bundle.iteration`` < total.

    Raises:
        NonFiniteLossError: a loss became NaN/inf; the last good weights are restored.
    """
    method = bundle.method
    control = control or TrainingControl()
    out = Path(out_dir) if out_dir is not None else None
    state = bundle.trainer_state
    main, r = distributed.is_main(), distributed.rank()
    if state.get("torch_rng") is not None:
        # several processes resume each its own streams when the run had as many
        rngs, samplers = state.get("torch_rngs"), state.get("samplers")
        same = rngs is not None and len(rngs) == distributed.world_size()
        torch.set_rng_state(rngs[r] if same else state["torch_rng"])
        if "sampler" in state:
            data.load_state_dict(samplers[r] if same and samplers else state["sampler"])
    else:
        torch.manual_seed(config.seed + r)
    for name, value in [
        ("warmup", config.warmup),
        ("warmup_plateau", config.warmup_plateau),
        ("prior_final", config.prior_final),
        ("prior_refresh", config.prior_refresh),
    ]:
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise SemisegError(f"{name} must be a number in [0, 1], got {value}")
    plateau = LossPlateau(config.warmup_plateau)
    # the networks and labeled-slice fit at the end of the warm-up (see training.fit)
    warm_networks: dict | None = None
    warm_fit = float("nan")
    start = bundle.iteration
    it = start
    has_warmup = bool(method.warmup_networks) and config.warmup > 0
    refresh_due = config.prior_refresh > 0 and bool(data.prior_probabilities)
    # Iteration at which the warm-up ended, None while it runs; the checkpoint keeps it
    # (-1: still warming up). A checkpoint from before warm-ups existed resumes without one.
    saved = state.get("warmup_end", 0 if "torch_rng" in state else -1)
    warm_end = None if has_warmup and saved < 0 else (saved if has_warmup else 0)
    total = _estimate_total(config, it, start, 0.0)
    log_file = None
    #: iteration of the last checkpoint on disk (a resumed run starts from one)
    saved_at = start if start > 0 else None
    if out is not None and main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(asdict(config), indent=2)
            atomic_write(out / "train_config.json", lambda tmp: tmp.write_text(text))
            log_file = (out / LOG_FILE).open("a")
        except OSError as exc:
            raise SemisegError(
                f"cannot write to the run folder {out} ({exc.strerror or exc}): choose a "
                "writable location with free space"
            ) from None
    last_good = copy.deepcopy(method.state_dict())
    t0 = time.perf_counter()
    paused = 0.0
    saved_elapsed = 0.0  # training seconds at the last checkpoint
    lr = 0.0

    def checkpoint() -> None:
        nonlocal last_good, saved_at
        bundle.iteration = it
        bundle.trainer_state = {"torch_rng": torch.get_rng_state(), "sampler": data.state_dict()}
        bundle.trainer_state["warmup_end"] = -1 if warm_end is None else int(warm_end)
        if distributed.world_size() > 1:  # every rank's streams, for --resume
            bundle.trainer_state["torch_rngs"] = distributed.gather(torch.get_rng_state())
            bundle.trainer_state["samplers"] = distributed.gather(data.state_dict())
        last_good = copy.deepcopy(method.state_dict())
        if out is None or not main:
            return
        try:
            save_model(bundle, out)
        except OSError as exc:
            kept = (
                f"the previous checkpoint (iteration {saved_at}) in it is intact: free space "
                "and continue with --resume"
                if saved_at is not None
                else "no earlier checkpoint exists: free space and train again"
            )
            raise CheckpointError(
                f"could not save the checkpoint of iteration {it} in {out} "
                f"({exc.strerror or exc}); {kept}"
            ) from None
        saved_at = it

    def emit(logs: dict, done: bool = False, message: str = "") -> None:
        elapsed = time.perf_counter() - t0 - paused
        rate = (it - start) / elapsed if elapsed > 0 and it > start else 0.0
        eta = (total - it) / rate if rate > 0 else float("nan")
        if config.minutes is not None:
            eta = max(0.0, config.minutes * 60 - elapsed)
        event = Progress(it, total, elapsed, eta, lr, logs, done, message)
        if log_file is not None and logs and not done:
            row = {"iteration": it, "lr": lr, "elapsed": round(elapsed, 3), **logs}
            try:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()  # a killed run keeps its history
            except OSError:  # a full disk: the checkpoint reports it; the log just stops
                pass
        if callback is not None and main:
            callback(event)

    phase: tuple[int, float] = (start, 0.0)  # first iteration and seconds of this phase
    governor = None
    if config.adapt_threads and method.device.type == "cpu":
        governor = ThreadGovernor(max_threads=torch.get_num_threads())
        governor.start()
    method.train()
    logs: dict[str, float] = {}
    try:
        while it < total:
            if governor is not None:
                governor.update()
            if control.paused:
                paused += control.wait_while_paused()
            warm_over = False
            elapsed = time.perf_counter() - t0 - paused
            done = elapsed / (config.minutes * 60) if config.minutes else it / max(total, 1)
            if refresh_due and done >= config.prior_refresh:
                refresh_due = False  # once, whether or not the network had learned enough
                if refresh_prior(method, data):
                    bundle.info["prior_refreshed_at"] = it
            if warm_end is None:
                warm_over = done >= config.warmup or plateau.update(logs.get("loss", math.nan))
            # several processes agree (a no-op alone): all stop or end the warm-up together
            stop, warm_over = distributed.any_rank(control.stop_requested, warm_over)
            if stop:
                break
            if warm_over:
                warm_end = it
                phase = (it, time.perf_counter() - t0 - paused)  # the own steps' rate from here
                method.end_warmup(data)
                if main:  # what the warm-up reached, to hand back if the method's own
                    warm_fit = labeled_fit(method, data)  # phase makes it worse
                    warm_networks = copy.deepcopy(method.state_dict()["networks"])
            if warm_end is None:
                data.prior_scale = 1.0
                logs = method.warmup_step(data)
                lr = method.warmup_lr
            else:
                own_it, own_total = it - warm_end, max(total - warm_end, 1)
                if has_warmup:
                    decay = min(1.0, own_it / own_total)
                    data.prior_scale = 1.0 - (1.0 - config.prior_final) * decay
                lr = method.set_lr(own_it, own_total)
                logs = method.train_step(data, own_it, own_total)
            (diverged,) = distributed.any_rank(not all(math.isfinite(v) for v in logs.values()))
            if diverged:
                bad = ", ".join(k for k, v in logs.items() if not math.isfinite(v)) or "a loss"
                method.load_state_dict(last_good)
                if saved_at is not None:
                    kept = f"the checkpoint of iteration {saved_at} is kept"
                else:  # nothing on disk to keep: a new run's folder is removed by the caller
                    kept = "no checkpoint was written before it, so no model is kept"
                raise NonFiniteLossError(
                    f"training diverged at iteration {it + 1}: {bad} became NaN/inf; {kept}. "
                    "Lower the learning rate (--set lr=...) or check the image for extreme "
                    "intensities"
                )
            it += 1
            elapsed = time.perf_counter() - t0 - paused
            total = _estimate_total(config, it, start, elapsed, phase)
            late = bool(
                config.checkpoint_seconds and elapsed - saved_elapsed >= config.checkpoint_seconds
            )
            time_up, late = distributed.any_rank(
                config.minutes is not None and elapsed >= config.minutes * 60, late
            )
            if time_up:
                total = it
            emit(logs)
            due = config.checkpoint_every and it % config.checkpoint_every == 0
            if (due or late) and it < total:
                checkpoint()
                saved_elapsed = elapsed
        if warm_end is None:  # stopped inside the warm-up (a resume continues it)
            method.end_warmup(data)
        method.finish(data)
        note = ""
        if main:
            fit = labeled_fit(method, data)
            if warm_networks is not None and fit < warm_fit - HAND_BACK_DROP:
                own = it - (warm_end or 0)
                note = (
                    f"{method.name}'s own step ran {own} iteration(s) and fits the labeled "
                    f"slices worse than its supervised warm-up (Dice {fit:.2f} against "
                    f"{warm_fit:.2f}): the warmed-up networks are handed back; give it more "
                    "time to pay off"
                )
                method.load_state_dict(
                    {"networks": warm_networks, "extra": method.extra_state_dict()},
                    with_optimizers=False,
                )
                fit = warm_fit
            bundle.info["labeled_fit"] = None if math.isnan(fit) else round(fit, 4)
            if data.cross_volumes:  # which other axes the predictions may average
                fits = plane_fits(method, data)
                bundle.info["plane_fits"] = {str(a): round(f, 4) for a, f in fits.items()}
            bundle.info["handed_back"] = note or None
        checkpoint()
        stopped = it < total
        emit(logs, done=True, message=note or ("stopped" if stopped else "finished"))
    except torch.cuda.OutOfMemoryError:
        method.load_state_dict(last_good)
        raise SemisegError(
            "out of GPU memory: lower --batch-size or --patch, or train on the CPU"
        ) from None
    finally:
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()
        method.eval()
    return bundle
