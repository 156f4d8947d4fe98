"""Building a SpeechLLM from a ModelConfig, and `load_model` for trained checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from dllm_asr import __version__
from dllm_asr.config import DEFAULT_MODEL, ModelConfig
from dllm_asr.model.adapters import build_adapter
from dllm_asr.model.checkpoint import CONFIG_FILE, check_weights, load_deltas, recover_interrupted_swap
from dllm_asr.model.decoders import load_decoder
from dllm_asr.model.decoders.base import resolve_dtype
from dllm_asr.model.decoders.whisper import load_whisper_text_decoder
from dllm_asr.model.encoders import SHORT_NAMES, CTCHead, load_whisper_encoder, resolve_short_name
from dllm_asr.model.speech_llm import SpeechLLM
from dllm_asr.model.whisper_diffusion import WhisperDiffusionASR
from dllm_asr.model.whisper_modules import WhisperDims
from dllm_asr.paths import package_file

MODELS_DIR = package_file("assets", "models")


def decoder_num_layers(decoder: torch.nn.Module) -> int:
    """Transformer layers of a decoder (one LoRA target match expected per layer)."""
    return int(decoder.num_layers)


def build_encoder(config: ModelConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The Whisper encoder; a "random" one is seeded from its config, so it rebuilds identically
    (its weights, being a frozen base, are not stored in checkpoints)."""
    if config.encoder.source != "random":
        return load_whisper_encoder(config.encoder.source, dtype=dtype)
    options = dict(config.encoder.random_config)
    seed = int(options.pop("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_whisper_encoder(WhisperDims(**options), dtype=dtype)


def build_model(config: ModelConfig, device: str | torch.device = "cpu",
                dtype: torch.dtype | str = torch.float32) -> SpeechLLM:
    """A SpeechLLM with pretrained (or random, for tests) base weights and fresh trainable parts.

    The encoder and decoder are loaded in `dtype` (bf16 saves memory for LLaDA-8B); the
    adapter, CTC head and LoRA weights are kept in float32 (they are the trained parameters).
    """
    dtype = resolve_dtype(dtype, device)
    encoder = build_encoder(config, dtype)
    if config.decoder.kind == "whisper":
        return build_whisper_model(config, encoder, dtype).to(device)
    decoder = load_decoder(config.decoder.kind, config.decoder.source, dtype=dtype,
                           random_config=config.decoder.random_config)
    if config.decoder.num_layers is not None:
        decoder.keep_first_layers(config.decoder.num_layers)
    for part in (encoder, decoder):
        part.requires_grad_(False)
    adapter = build_adapter(config.adapter, encoder.d_model, decoder.hidden_size)
    ctc_head = CTCHead(encoder.d_model) if config.encoder.ctc_head else None
    if config.lora.enabled:
        from dllm_asr.model.lora import apply_lora  # peft imports transformers: only when used

        apply_lora(decoder, config.lora, decoder_num_layers(decoder))
    model = SpeechLLM(config, encoder, adapter, decoder, ctc_head)
    return model.to(device)


def whisper_decoder_dir(config: ModelConfig) -> Path:
    """The Whisper checkpoint whose decoder a "whisper" decoder adapts: `decoder.source`, or the
    encoder's checkpoint when that is empty or "encoder"."""
    source = config.decoder.source if config.decoder.source not in ("", "encoder") else config.encoder.source
    path = Path(source)
    if not path.is_dir() and source in SHORT_NAMES:
        path = resolve_short_name(source)
    if not path.is_dir():
        raise ValueError(f"model.decoder.source: Whisper checkpoint {source!r} is neither a directory nor one of "
                         f"{', '.join(SHORT_NAMES)}")
    return path


def build_whisper_model(config: ModelConfig, encoder: torch.nn.Module, dtype: torch.dtype) -> WhisperDiffusionASR:
    """The default model's family: Whisper's decoder adapted to diffusion, beside the original one."""
    if config.lora.enabled:
        raise ValueError("model.lora.enabled: the whisper decoder is fine-tuned in full; set lora.enabled false")
    directory = whisper_decoder_dir(config)
    base, tokenizer = load_whisper_text_decoder(directory, dtype=dtype)
    decoder = copy.deepcopy(base)  # the copy to adapt; reading the checkpoint again costs more
    for part in (encoder, base, decoder):
        part.requires_grad_(False)
    ctc_head = CTCHead(encoder.d_model) if config.encoder.ctc_head else None
    return WhisperDiffusionASR(config, encoder, decoder, base, tokenizer, ctc_head)


def resolve_model_dir(path_or_name: str | Path) -> Path:
    """A checkpoint directory from a path or a shipped model name; the error lists the names."""
    path = Path(path_or_name)
    recover_interrupted_swap(path)
    if path.is_dir():
        return path
    shipped = MODELS_DIR / str(path_or_name)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in MODELS_DIR.glob("*") if p.is_dir()) if MODELS_DIR.is_dir() else []
    raise ValueError(f"{path_or_name}: no such checkpoint directory or shipped model "
                     f"(shipped: {', '.join(names) or 'none yet'})")


def load_config(path: Path) -> ModelConfig:
    """A checkpoint's config.json; any problem is one ValueError naming the file, fields this
    version does not know (a config from another version of dllm-asr) included."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable dllm-asr model config ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a dllm-asr model config (a JSON object expected)")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; a config from another version of "
                         f"dllm-asr? (this is {__version__})")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_model(path_or_name: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.float32) -> SpeechLLM:
    """Load a trained SpeechLLM: its config rebuilds the model, its deltas are loaded on top.

    `path_or_name` is a checkpoint directory (config.json + model.safetensors) or the name of a
    model shipped with the package. `dtype` of the base weights: float32 by default (exact, the
    same on every machine); "auto", as the CLI and `dllm_asr.transcribe` use, is bfloat16 on a CPU
    with native bf16 matrix instructions (1.3-1.7 times faster, same WER), else float32. Returns the
    model in eval mode.
    """
    directory = resolve_model_dir(path_or_name)
    if not (directory / CONFIG_FILE).is_file():
        raise ValueError(f"{directory}: not a dllm-asr checkpoint (no {CONFIG_FILE})")
    config = load_config(directory / CONFIG_FILE)
    check_weights(directory)  # missing or truncated: said now, not after the base model is built
    model = build_model(config, device=device, dtype=dtype)
    load_deltas(model, directory)
    return model.eval()
