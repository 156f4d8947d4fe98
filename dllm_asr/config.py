"""Configuration dataclasses: every model dimension lives here and is saved with each checkpoint.

A `ModelConfig` is enough to rebuild a `SpeechLLM`: the frozen base weights are referenced by
name or directory (`encoder.source`, `decoder.source`), never copied into a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "dllm-asr-tiny-en"
"""The model `dllm-asr transcribe` and `load_model()` use when none is named (shipped in assets/models)."""


@dataclass
class EncoderConfig:
    """The Whisper speech encoder."""

    source: str = "whisper-tiny.en"
    """A short name ("whisper-tiny.en", "whisper-base"), a Hugging Face Whisper directory, a
    CTranslate2 directory, or "random" (random init from `random_config`, for tests)."""
    random_config: dict[str, Any] = field(default_factory=dict)
    """Whisper config fields (`WhisperDims`: d_model, encoder_layers...) and "seed", used when
    source == "random"."""
    pad_to_30s: bool = False
    """Pad every input to 30 s as original Whisper does; False encodes only the clip's frames."""
    frozen: bool = True
    """Freeze the encoder's weights during training (both papers do)."""
    ctc_head: bool = True
    """Add a character CTC head on the encoder output (the dLLM-ASR "ASR prior")."""


@dataclass
class AdapterConfig:
    """The modality adapter between the encoder and the LLM."""

    kind: str = "qformer"
    """"qformer" (Whisper-LLaDA window-level Q-Former) or "conv" (dLLM-ASR stride-2 Conv1d)."""
    window: int = 17
    """Q-Former window length in encoder frames (17 frames = 0.33 s)."""
    num_queries: int = 4
    """Learned queries per window."""
    num_layers: int = 2
    """Q-Former transformer layers (each with self- and cross-attention)."""
    hidden_size: int = 768
    """Q-Former width."""
    num_heads: int = 12
    """Q-Former attention heads."""
    partial_window: str = "pad"
    """"pad": keep a trailing partial window (masked); "drop": drop it, as the reference does
    (30 s -> 88 windows)."""
    conv_stride: int = 2
    """Stride of the conv projector."""
    dropout: float = 0.1


@dataclass
class DecoderConfig:
    """The masked-diffusion LLM decoder."""

    kind: str = "hf"
    """"llada" (native LLaDA checkpoint directory), "hf" (LLaMA-family LM made bidirectional) or
    "whisper" (Whisper's own decoder adapted to masked diffusion, reading the audio through its
    cross-attention: the default model's family; no adapter, no LoRA)."""
    source: str = "smollm2-135m"
    """A short name ("smollm2-135m"), a checkpoint directory, or "random" (tests). For kind
    "whisper": a Whisper checkpoint, or "encoder" for the encoder's own."""
    random_config: dict[str, Any] = field(default_factory=dict)
    """Config fields used when source == "random"."""
    num_layers: int | None = None
    """Keep only the first N pretrained layers (a decoder slice: cheaper, e.g. for CPU runs);
    None keeps them all."""
    frozen: bool = True
    """Freeze the decoder's base weights (train LoRA only, as both papers do). False allows a stage
    to fine-tune the whole decoder (small decoders); its weights are then stored in checkpoints."""


@dataclass
class LoraAdapterConfig:
    """LoRA on the decoder's attention projections (paper: q/k/v, rank 8, alpha 32, dropout 0.1)."""

    enabled: bool = True
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """Module-name suffixes to adapt; each must match exactly one module per decoder layer."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a SpeechLLM."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)
    prompt: str = "Transcribe the audio."
    """User-turn text of the chat-template prompt that precedes the audio embeddings."""
    max_response_tokens: int = 128
    """Longest response block L; shorter blocks are anchored on the audio duration."""
    objective: str = "diffusion"
    """"diffusion" (masked-diffusion decoder) or "ar" (the same LM used causally: the
    Whisper-LLaMA-style autoregressive baseline)."""
    decoding: dict[str, Any] = field(default_factory=dict)
    """TranscribeOptions fields this model decodes best with (the shipped model's: its best
    strategy in the bench); `dllm-asr transcribe`/`eval` use them where no flag is given, and
    `dllm_asr.transcription.strategies.model_options` gives them to Python callers."""
    window_seconds: float = 30.0
    """Longest audio decoded in one piece; longer clips are cut at pauses into windows of at most
    this long (`dllm_asr.audio.segment`). Whisper's 30 s by default; a model trained on short clips
    sets what it was trained on."""

    def __post_init__(self) -> None:
        from dllm_asr.transcription.options import TranscribeOptions

        unknown = sorted(set(self.decoding) - {f.name for f in dataclasses.fields(TranscribeOptions)})
        if unknown:
            raise ValueError(f"unknown model.decoding option(s): {', '.join(unknown)}")
        TranscribeOptions(**self.decoding)  # impossible values fail here, with the option's name
        if self.window_seconds <= 0:
            raise ValueError(f"model.window_seconds must be > 0, got {self.window_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(
            encoder=build_dataclass(EncoderConfig, data.get("encoder", {})),
            adapter=build_dataclass(AdapterConfig, data.get("adapter", {})),
            decoder=build_dataclass(DecoderConfig, data.get("decoder", {})),
            lora=build_dataclass(LoraAdapterConfig, data.get("lora", {})),
            **{k: v for k, v in data.items() if k in ("prompt", "max_response_tokens", "objective", "window_seconds", "decoding")},
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a readable dllm-asr model config ({err})") from None


def build_dataclass(kind: type, data: dict[str, Any]) -> Any:
    """Instantiate a config dataclass, naming any unknown field in the error."""
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} option(s): {', '.join(unknown)}")
    values = dict(data)
    if "targets" in values:
        values["targets"] = tuple(values["targets"])
    return kind(**values)
