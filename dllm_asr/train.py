"""Training: `dllm-asr train --config RECIPE.yaml [key=value ...]`.

One loop for one CPU, one GPU or many (torchrun / accelerate launch set the usual env vars and
this file uses DDP over them). The data order is a pure function of (seed, micro-batch index),
and the masking noise of each micro-batch is seeded by its global index, so

* a resumed run continues exactly where the killed one saved (model, optimiser, schedule, RNG
  and data position are in every checkpoint), and
* N processes with accumulation A see exactly the micro-batches of 1 process with
  accumulation N*A: the loss curve is the same for the same global batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import delta_parameter_names, load_deltas, load_train_state, save_model
from .diffusion import forward_mask, masked_diffusion_loss, next_token_loss
from .distributed import DistContext, init_distributed
from .encoders import ctc_loss
from .loading import build_model
from .model import SpeechLLM, encode_transcripts
from .recipe import TrainConfig
from .schedule import StagePlan, learning_rate
from .trainer_data import MicroBatchLoader

log = logging.getLogger("dllm_asr.train")


def set_trainable(model: SpeechLLM, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze everything but `parts` (adapter, ctc_head, lora, encoder); returns the trained parameters."""
    trained = []
    for name, param in model.named_parameters():
        part = "lora" if "lora_" in name else name.split(".")[0]
        param.requires_grad_(part in parts)
        if param.requires_grad:
            trained.append(param)
    if not trained:
        raise ValueError(f"stage trains {parts}, but the model has no such parameters")
    return trained


def micro_batch_loss(core: SpeechLLM, audios, texts, cfg: TrainConfig, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """The loss of one micro-batch: masked diffusion (or next-token) plus the weighted CTC loss."""
    feats, feat_lengths = core.features(audios)
    audio = core.encode(feats, feat_lengths)
    ids, text_lengths = encode_transcripts(core.tokenizer, texts, core.eos_id)
    ids = ids.to(core.device)
    positions = torch.arange(ids.shape[1], device=core.device)[None]
    stats: dict[str, float] = {}
    if core.config.objective == "ar":
        valid = positions <= text_lengths.to(core.device)[:, None]  # transcript and its first EOS
        logits = core.response_logits(audio, ids, causal=True)
        loss = next_token_loss(logits, ids, valid)
    else:
        valid = torch.ones_like(ids, dtype=torch.bool)  # EOS padding is part of the answer (LLaDA)
        noisy = forward_mask(ids, valid, core.mask_id, cfg.mask_eps, cfg.full_mask_fraction, generator)
        logits = core.response_logits(audio, noisy.noisy)
        loss = masked_diffusion_loss(logits, ids, noisy, valid, cfg.loss_weighting)
    stats["lm_loss"] = float(loss)
    if core.ctc_head is not None and cfg.ctc_weight > 0 and audio.ctc_log_probs is not None:
        ctc = ctc_loss(audio.ctc_log_probs, audio.encoder_lengths, texts)
        stats["ctc_loss"] = float(ctc)
        loss = loss + cfg.ctc_weight * ctc
    return loss, stats


class Trainer:
    """Holds the model, optimiser and position of one training run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist: DistContext = init_distributed(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, device=self.dist.device, dtype=cfg.base_dtype)
        if cfg.init_from:
            load_deltas(self.model, cfg.init_from)
        self.plan = StagePlan(cfg.stages)
        names = delta_parameter_names(self.model)
        params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW([params[n] for n in names], lr=cfg.schedule.lr,
                                           weight_decay=cfg.weight_decay)
        self.loader = MicroBatchLoader(cfg, self.dist)
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
            log.info("resumed from %s at step %d", last, self.step)

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
        if self.cfg.model.encoder.frozen:
            self.model.encoder.eval()
        totals: dict[str, float] = {}
        utterances = 0
        for micro in self.loader.micro_indices(self.step):
            audios, texts = self.loader.load(micro)
            utterances += len(texts)
            generator = torch.Generator(device=self.dist.device).manual_seed(cfg.seed * 1_000_003 + micro)
            with torch.autocast(self.dist.device.type, dtype=cfg.autocast_dtype, enabled=cfg.autocast_dtype is not None):
                loss, stats = micro_batch_loss(self.model, audios, texts, cfg, generator)
            (loss / cfg.grad_accum).backward()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
            totals["loss"] = totals.get("loss", 0.0) + float(loss) / cfg.grad_accum
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.dist.average_gradients(trained)
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["lr"] = lr
        totals["utterances"] = utterances
        self.step += 1
        return totals

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
        from .evaluate import evaluate_model

        if not self.cfg.data.dev:
            return None
        report = evaluate_model(self.model, self.cfg.data.dev, self.cfg.eval_options(),
                                max_utterances=self.cfg.data.dev_max_utterances, batch_size=self.cfg.data.max_batch_size,
                                warmup=False)
        return report.wer

    def log(self, stats: dict[str, float]) -> None:
        record = {"step": self.step, **stats}
        self.history.append(record)
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(f"train/{key}", value, self.step)
        with open(self.out / "train_log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def checkpoint(self, final: bool) -> None:
        """Dev-evaluate, keep the best-by-dev-WER and the last checkpoint (main process only)."""
        cfg = self.cfg
        if self.dist.is_main:
            wer = self.evaluate_dev()
            if wer is not None:
                self.history.append({"step": self.step, "dev_wer": wer})
                if self.writer is not None:
                    self.writer.add_scalar("dev/wer", wer, self.step)
                log.info("step %d: dev WER %.2f%% (whisper_english normaliser)", self.step, 100 * wer)
                if wer < self.best_wer:
                    self.best_wer = wer
                    self.save("best")
            self.save("last")
        self.dist.barrier()


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the training described by `cfg`; returns the output directory."""
    trainer = Trainer(cfg)
    out = trainer.out
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    trainer.resume_if_possible()
    total = trainer.plan.total_steps
    bar = tqdm(total=total, initial=trainer.step, disable=not trainer.dist.is_main, desc="train", unit="step")
    started, done_utts = time.perf_counter(), 0
    while trainer.step < total:
        stats = trainer.train_step()
        done_utts += stats["utterances"] * trainer.dist.world_size
        stats["utt_per_s"] = done_utts / max(time.perf_counter() - started, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", utt_s=f"{stats['utt_per_s']:.1f}")
        if trainer.dist.is_main and (trainer.step % cfg.log_every == 0 or trainer.step == total):
            trainer.log(stats)
        if trainer.step % cfg.save_every == 0 or trainer.step == total:
            trainer.checkpoint(final=trainer.step == total)
        if cfg.stop_after_steps and trainer.step >= cfg.stop_after_steps:
            break
    bar.close()
    trainer.dist.shutdown()
    return out
