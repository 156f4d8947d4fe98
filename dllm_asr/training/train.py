"""Training: `dllm-asr train --config RECIPE.yaml [key=value ...]`.

One loop for one CPU, one GPU or many (torchrun / accelerate launch set the usual env vars; the
trained deltas' gradients are averaged over processes after each backward, as DDP would). The data order is a pure function of (seed, micro-batch index),
and the masking noise of each micro-batch is seeded by its global index, so

* a resumed run continues exactly where the killed one saved (model, optimiser, schedule, RNG
  and data position are in every checkpoint), and
* N processes with accumulation A see exactly the micro-batches of 1 process with
  accumulation N*A: the loss curve is the same for the same global batch.

Dropout (LoRA, adapter) draws from the global torch RNG, which is therefore re-seeded from the
micro-batch index before each forward pass, for the same two reasons.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dllm_asr.model.checkpoint import load_deltas, load_train_state, recover_interrupted_swap, save_model
from dllm_asr.model.loading import build_model
from dllm_asr.model.speech_llm import SpeechLLM
from dllm_asr.training.batches import MicroBatchLoader
from dllm_asr.training.distributed import DistContext, init_distributed
from dllm_asr.training.objectives import ctc_loss, response_loss
from dllm_asr.training.recipe import TrainConfig
from dllm_asr.training.schedule import StagePlan, learning_rate
from dllm_asr.transcription.strategies import block_lengths, model_options

log = logging.getLogger("dllm_asr.training.train")


def set_trainable(model: SpeechLLM, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze everything but `parts` (adapter, ctc_head, lora, encoder, decoder); returns the trained parameters."""
    trained, found = [], set()
    always_frozen = model.frozen_parameter_names()
    for name, param in model.named_parameters():
        part = model.parameter_part(name)
        param.requires_grad_(part in parts and name not in always_frozen)
        if param.requires_grad:
            trained.append(param)
            found.add(part)
    missing = sorted(set(parts) - found)
    if missing:  # e.g. "lora" with lora.enabled false: say so rather than train less than asked
        raise ValueError(f"stage trains {', '.join(missing)}, but the model has no such parameters")
    return trained


def micro_batch_loss(core: SpeechLLM, audios, texts, cfg: TrainConfig, generator: torch.Generator,
                     encoder_cache: "EncoderCache | None" = None) -> tuple[Tensor, dict[str, float]]:
    """The loss of one micro-batch: masked diffusion (or next-token) plus the weighted CTC loss."""
    if encoder_cache:
        audio = core.audio_context(*encoder_cache.encode(core, audios, cfg.pad_to_seconds))
    else:
        audio = core.encode(*core.padded_features(audios, cfg.pad_to_seconds))
    stats: dict[str, float] = {}
    blocks = block_lengths(core, audios, model_options(core)) if cfg.response_blocks == "duration" else None
    loss = response_loss(core, audio, texts, cfg.loss_weighting, cfg.mask_eps, cfg.full_mask_fraction, generator,
                         blocks)
    stats["lm_loss"] = loss.item()
    if core.ctc_head is not None and cfg.ctc_weight > 0 and audio.ctc_log_probs is not None:
        ctc = ctc_loss(audio.ctc_log_probs, audio.encoder_lengths, texts)
        stats["ctc_loss"] = ctc.item()
        loss = loss + cfg.ctc_weight * ctc
    return loss, stats


class EncoderCache:
    """Frozen-encoder outputs of training clips, kept in memory (fp16) and reused in later epochs.

    Keyed by the waveform's bytes, so an augmented copy of a clip is a different entry; with
    augmentation every epoch differs and the cache only costs memory (`max_gigabytes` bounds it:
    past it, new outputs are computed and not kept). Exact up to fp16 rounding of the output.
    """

    def __init__(self, max_gigabytes: float):
        self.max_bytes = int(max_gigabytes * 2**30)
        self.bytes = 0
        self.entries: dict[bytes, Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(audio) -> bytes:
        return hashlib.sha1(audio.tobytes()).digest() + len(audio).to_bytes(8, "little")

    def encode(self, core, audios, pad_to_seconds: float = 0.0) -> tuple[Tensor, Tensor]:
        """Waveforms -> encoder output (B, T, d) zero-padded, and valid frames (B,). A cache
        serves one run, whose `pad_to_seconds` is fixed, so the key leaves it out."""
        keys = [self.key(a) for a in audios]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        fresh = {}
        if missing:
            with torch.no_grad():
                hidden, lengths = core.encode_hidden(*core.padded_features([audios[i] for i in missing], pad_to_seconds))
            for row, i in enumerate(missing):
                fresh[keys[i]] = hidden[row, : int(lengths[row])].to(torch.float16).cpu()
        self.hits += len(audios) - len(missing)
        self.misses += len(missing)
        for key, value in fresh.items():
            if self.bytes + value.numel() * 2 <= self.max_bytes:
                self.entries[key] = value
                self.bytes += value.numel() * 2
        rows = [self.entries.get(k, fresh.get(k)) for k in keys]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        out = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[-1])
        for i, r in enumerate(rows):
            out[i, : len(r)] = r.float()
        dtype = next(core.encoder.parameters()).dtype
        return out.to(core.device, dtype), lengths.to(core.device)


def micro_batch_seed(seed: int, micro: int) -> int:
    """The RNG seed of global micro-batch `micro` (masking noise and dropout)."""
    return (seed * 1_000_003 + micro) % (2**63 - 1)


def check_stages(cfg: TrainConfig) -> None:
    """A stage may train the encoder/decoder only when the model config unfreezes it (so it is checkpointed)."""
    for stage in cfg.stages:
        for part in ("encoder", "decoder"):
            if part in stage.train and getattr(cfg.model, part).frozen:
                raise ValueError(f"stage {stage.name!r} trains the {part}, but model.{part}.frozen is true")


class Trainer:
    """Holds the model, optimiser and position of one training run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        check_stages(cfg)
        self.dist: DistContext = init_distributed(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, device=self.dist.device, dtype=cfg.base_dtype)
        if cfg.init_from:
            load_deltas(self.model, cfg.init_from)
        self.plan = StagePlan(cfg.stages)
        names = self.model.delta_parameter_names()
        params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW([params[n] for n in names], lr=cfg.schedule.lr,
                                           weight_decay=cfg.weight_decay)
        self.loader = MicroBatchLoader(cfg, self.dist)
        use_cache = cfg.cache_encoder_gb > 0 and cfg.model.encoder.frozen
        self.encoder_cache = EncoderCache(cfg.cache_encoder_gb) if use_cache else None
        self.step = 0
        self.best_wer = math.inf
        self.history: list[dict] = []
        self.out = Path(cfg.output_dir)
        self.stage_index = -1
        self.writer = self._tensorboard() if self.dist.is_main else None

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra ("train")
            log.warning("tensorboard not installed: no TensorBoard logs (pip install 'dllm-asr[train]')")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def resume_if_possible(self) -> None:
        last = self.out / "checkpoints" / "last"
        recover_interrupted_swap(last)
        if not (last / "train_state.json").is_file():
            return
        load_deltas(self.model, last)
        state = load_train_state(last)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_wer = float(state["best_wer"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.dist.is_main:
            self.rewrite_log()
            log.info("resumed from %s at step %d", last, self.step)

    def rewrite_log(self) -> None:
        """train_log.jsonl as of the checkpoint: a killed run may have logged steps past it."""
        with open(self.out / "train_log.jsonl", "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in self.history)

    def enter_stage(self, index: int) -> None:
        stage = self.plan.stages[index]
        set_trainable(self.model, stage.train)
        self.stage_index = index
        if self.dist.is_main:
            log.info("stage %s: training %s for %d steps", stage.name, ",".join(stage.train), stage.steps)

    def train_step(self) -> dict[str, float]:
        """One optimiser step over `grad_accum` micro-batches on this process."""
        cfg = self.cfg
        index, in_stage = self.plan.locate(self.step)
        if index != self.stage_index:
            self.enter_stage(index)
        lr = learning_rate(cfg.schedule, in_stage, self.plan.stages[index].steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if hasattr(self.model, "attention_reveal"):
            anneal = cfg.attention_anneal_steps
            self.model.attention_reveal = min(1.0, self.step / anneal) if anneal > 0 else 1.0
        if self.cfg.model.encoder.frozen:
            self.model.encoder.eval()
        totals = dict.fromkeys(self.stat_names(), 0.0)  # the same keys on every process
        utterances = 0
        for micro in self.loader.micro_indices(self.step):
            audios, texts = self.loader.load(micro)
            if not texts:  # every clip of this micro-batch was skipped as unreadable
                continue
            utterances += len(texts)
            stats = self.micro_step(audios, texts, micro)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
        # The logged numbers are means over all processes: the same curve for any process count.
        totals = self.dist.mean_over_processes(totals)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.dist.average_gradients(trained)
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["lr"] = lr
        totals["utterances"] = self.dist.sum_over_processes(utterances)
        self.step += 1
        return totals

    def out_of_time(self, started: float) -> bool:
        """Whether stop_after_minutes has passed (on any process, so that all stop together)."""
        if self.cfg.stop_after_minutes is None:
            return False
        late = time.perf_counter() - started >= 60 * self.cfg.stop_after_minutes
        return self.dist.mean_over_processes({"late": float(late)})["late"] > 0

    def stat_names(self) -> list[str]:
        with_ctc = self.model.ctc_head is not None and self.cfg.ctc_weight > 0
        return ["loss", "lm_loss"] + (["ctc_loss"] if with_ctc else [])

    def micro_step(self, audios, texts, micro: int) -> dict[str, float]:
        """Forward and backward of one micro-batch (gradients scaled by 1/grad_accum); its stats."""
        cfg = self.cfg
        seed = micro_batch_seed(cfg.seed, micro)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(device=self.dist.device).manual_seed(seed)  # masking noise
        with torch.autocast(self.dist.device.type, dtype=cfg.autocast_dtype, enabled=cfg.autocast_dtype is not None):
            loss, stats = micro_batch_loss(self.model, audios, texts, cfg, generator, self.encoder_cache)
        (loss / cfg.grad_accum).backward()
        return {**stats, "loss": loss.item()}

    def train_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "best_wer": self.best_wer,
            "history": json.dumps(self.history),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, name: str) -> Path:
        path = save_model(self.model, self.out / "checkpoints" / name, self.train_state())
        return path

    def evaluate_dev(self) -> float | None:
        """Corpus WER (Whisper English normaliser) on the dev set, or None without one."""
        from dllm_asr.evaluation.evaluate import evaluate_model

        if not self.cfg.data.dev:
            return None
        report = evaluate_model(self.model, self.cfg.data.dev, self.cfg.eval_options(),
                                max_utterances=self.cfg.data.dev_max_utterances, batch_size=self.cfg.data.max_batch_size,
                                warmup=False)
        return report.wer

    def dev_audio_gain(self, count: int = 16) -> float | None:
        """Loss with swapped minus matched audio on the first dev clips (see `audio_gain`);
        None for a dev set of fewer than 2 readable clips, which has no audio to swap."""
        from dllm_asr.evaluation.evaluate import data_audio_gain

        was_training = self.model.training
        self.model.eval()
        try:
            matched, swapped, _ = data_audio_gain(self.model, self.cfg.data.dev, count)
        except ValueError:
            return None
        finally:
            self.model.train(was_training)
        return swapped - matched

    def log(self, stats: dict[str, float], group: str = "train") -> None:
        """Append {"step", **stats} to the history, train_log.jsonl and TensorBoard (`group`/key)."""
        record = {"step": self.step, **stats}
        self.history.append(record)
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(f"{group}/{key}", value, self.step)
            self.writer.flush()
        with open(self.out / "train_log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def checkpoint(self) -> None:
        """Dev-evaluate, keep the best-by-dev-WER and the last checkpoint (main process only)."""
        if self.dist.is_main:
            wer = self.evaluate_dev()
            if wer is not None:
                gain = self.dev_audio_gain()
                self.log({"dev_wer": wer} if gain is None else {"dev_wer": wer, "dev_audio_gain": gain}, group="dev")
                tqdm.write(f"step {self.step}: dev WER {100 * wer:.2f}% (whisper_english normaliser), audio gain "
                           f"{'-' if gain is None else f'{gain:.3f}'} nats/token", file=sys.stderr)
                if wer < self.best_wer:
                    self.best_wer = wer
                    self.save("best")
            self.save("last")
        self.dist.barrier()


def progress_line(step: int, total: int, stats: dict[str, float]) -> str:
    """'step 120/1400 loss 5.210 lr 2.90e-04 utt/s 2.3': the bar's figures as one log line."""
    return (f"step {step}/{total} loss {stats['loss']:.3f} lr {stats['lr']:.2e} "
            f"utt/s {stats['utt_per_s']:.1f}")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the training described by `cfg`; returns the output directory."""
    trainer = Trainer(cfg)
    out = trainer.out
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    trainer.resume_if_possible()
    # stop_after_steps ends a time-boxed run early, with a checkpoint to resume from.
    end = min(trainer.plan.total_steps, cfg.stop_after_steps or trainer.plan.total_steps)
    # A bar redrawn into a log file (nohup, a cluster job) is megabytes of noise: there, the
    # logged steps are printed as plain lines instead.
    interactive = sys.stderr.isatty()
    bar = tqdm(total=trainer.plan.total_steps, initial=trainer.step,
               disable=not (trainer.dist.is_main and interactive), desc="train", unit="step")
    started, done_utts = time.perf_counter(), 0
    while trainer.step < end:
        stats = trainer.train_step()
        done_utts += stats["utterances"]  # already summed over processes
        stats["utt_per_s"] = done_utts / max(time.perf_counter() - started, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", utt_s=f"{stats['utt_per_s']:.1f}")
        out_of_time = trainer.out_of_time(started)
        at_end = trainer.step == end or out_of_time
        if trainer.dist.is_main and (trainer.step % cfg.log_every == 0 or at_end):
            trainer.log(stats)
            if not interactive:
                print(progress_line(trainer.step, trainer.plan.total_steps, stats), file=sys.stderr, flush=True)
        if trainer.step % cfg.save_every == 0 or at_end:
            trainer.checkpoint()
        if out_of_time:
            log.warning("stop_after_minutes=%s reached at step %d: checkpointed; run the same command to resume",
                        cfg.stop_after_minutes, trainer.step)
            break
    bar.close()
    if trainer.writer is not None:
        trainer.writer.close()
    trainer.dist.shutdown()
    return out
