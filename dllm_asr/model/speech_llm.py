"""SpeechLLM: Whisper encoder + adapter + (masked-diffusion or causal) LLM decoder.

The decoder sees, per row, `[prompt | audio_i | response]` packed contiguously and left-padded
(docs/architecture.md), so the response block is always the last L positions and a row's
logits do not depend on the other rows of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dllm_asr.audio.features import SAMPLE_RATE, log_mel_batch, num_frames, zero_pad_frames_to_at_least
from dllm_asr.config import ModelConfig
from dllm_asr.model.block_cache import CACHE_MODES, BlockCachePredictor, SequenceCache, column_attention_mask
from dllm_asr.model.decoders.base import position_ids_from_mask
from dllm_asr.model.decoders.causal import GeneratedTokens, ar_generate
from dllm_asr.model.encoders import ctc_greedy_decode
from dllm_asr.timer import Timer
from dllm_asr.transcription.options import TranscribeOptions


@dataclass
class AudioContext:
    """Encoded audio of a batch, ready to condition the decoder.

    embeds: (B, N, D) adapter outputs; lengths: (B,) valid embeddings per row;
    ctc_log_probs: (B, T, C) or None; encoder_lengths: (B,) valid encoder frames per row.
    """

    embeds: Tensor
    lengths: Tensor
    ctc_log_probs: Tensor | None = None
    encoder_lengths: Tensor | None = None

    def select(self, rows: Tensor) -> "AudioContext":
        """The sub-batch of `rows` (B',), trimmed to its own longest row."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        ctc = None if self.ctc_log_probs is None else self.ctc_log_probs[rows]
        enc = None if self.encoder_lengths is None else self.encoder_lengths[rows]
        return AudioContext(self.embeds[rows, :width], lengths, ctc, enc)


class SpeechModel(nn.Module):
    """What every model family shares: token ids and device read off its decoder and prompt, and
    encoding as features -> `encode_hidden` -> `audio_context`. A family defines `decoder`
    (with `mask_token_id`, `eos_token_id`), a `prompt_ids` buffer, `features`, `encode_hidden`
    and `audio_context`."""

    @property
    def mask_id(self) -> int:
        return self.decoder.mask_token_id

    @property
    def eos_id(self) -> int:
        return self.decoder.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    encoder_seconds: float = 0.0
    """Wall time spent in `encode` so far (all calls summed): benchmarks subtract it to report
    the decoder's own time."""

    def encode(self, features: Tensor, feature_lengths: Tensor) -> AudioContext:
        """features (B, n_mels, T), feature_lengths (B,) -> AudioContext."""
        with Timer() as timer:
            audio = self.audio_context(*self.encode_hidden(features, feature_lengths))
        self.encoder_seconds += timer.seconds
        return audio

    def encode_audio(self, audios: Sequence[np.ndarray], pad_to_seconds: float = 0.0) -> AudioContext:
        """Waveforms (16 kHz float32) -> AudioContext. Clips shorter than `pad_to_seconds` are
        encoded with zero feature frames appended up to that length
        (`TranscribeOptions.pad_to_seconds`)."""
        return self.encode(*self.padded_features(audios, pad_to_seconds))

    def encode_for(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> AudioContext:
        """The encoder pass that `options` decodes from: `encode_audio` with
        its `pad_to_seconds`. Models whose AR decoder reads another input override it."""
        return self.encode_audio(audios, options.pad_to_seconds)

    def padded_features(self, audios: Sequence[np.ndarray], pad_to_seconds: float = 0.0) -> tuple[Tensor, Tensor]:
        """`features` (B, n_mels, T) and frame counts (B,), with zero frames appended to every
        clip shorter than `pad_to_seconds` (counted as valid frames: the encoder reads them)."""
        features, lengths = self.features(audios)
        min_frames = num_frames(round(pad_to_seconds * SAMPLE_RATE))
        return zero_pad_frames_to_at_least(features, lengths, min_frames)

    def transcribe(self, audio, **options):
        """Transcribe one recording (a path or a 16 kHz waveform) of any length, as Whisper's
        `model.transcribe` does: `model.transcribe("talk.mp3", strategy="ar").text`. `options`:
        `TranscribeOptions` fields and `batch_size`; see `dllm_asr.transcription.long_form.transcribe_audio`."""
        from dllm_asr.transcription.long_form import transcribe_audio  # inference builds on this module

        return transcribe_audio(self, audio, **options)

    def frozen_parameter_names(self) -> set[str]:
        """Parameters no training stage may change, whatever parts it names (none by default)."""
        return set()

    @staticmethod
    def parameter_part(name: str) -> str:
        """The part a parameter belongs to, as training stages name them: lora, adapter, ctc_head,
        encoder or decoder."""
        return "lora" if "lora_" in name else name.split(".")[0]

    def ctc_transcripts(self, audio: AudioContext) -> list[str] | None:
        """The CTC head's greedy transcripts of an encoded batch (dLLM-ASR's ASR prior), one per
        row; None for a model without a CTC head."""
        if audio.ctc_log_probs is None:
            return None
        return ctc_greedy_decode(audio.ctc_log_probs, audio.encoder_lengths)


class SpeechLLM(SpeechModel):
    """The full model of both papers. Build it with `dllm_asr.build_model` or `load_model`."""

    def __init__(self, config: ModelConfig, encoder: nn.Module, adapter: nn.Module,
                 decoder: nn.Module, ctc_head: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.adapter = adapter
        self.decoder = decoder
        self.ctc_head = ctc_head
        self.register_buffer("prompt_ids", prompt_token_ids(decoder.tokenizer, config.prompt), persistent=False)

    @property
    def tokenizer(self):
        return self.decoder.tokenizer

    def features(self, audios: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        """16 kHz waveforms -> log-mel features (B, n_mels, T) and frame counts (B,) on the model's device."""
        feats, lengths = log_mel_batch(list(audios), n_mels=self.encoder.n_mels,
                                       pad_to_30s=self.config.encoder.pad_to_30s)
        return feats.to(self.device), lengths.to(self.device)

    def encode_hidden(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's output (B, T, d) and valid frames (B,): what training may cache."""
        return self.encoder(features.to(self._encoder_dtype()), feature_lengths)

    def audio_context(self, hidden: Tensor, hidden_lengths: Tensor) -> AudioContext:
        """Encoder output -> AudioContext (CTC head and adapter applied)."""
        ctc = self.ctc_head(hidden.float()) if self.ctc_head is not None else None
        adapter_dtype = next(self.adapter.parameters()).dtype
        embeds, lengths = self.adapter(hidden.to(adapter_dtype), hidden_lengths)
        return AudioContext(embeds, lengths, ctc, hidden_lengths)

    def delta_parameter_names(self) -> list[str]:
        """What a checkpoint stores: the adapter, the CTC head, the LoRA weights, and the encoder
        or decoder when the config unfreezes it; never the frozen base weights."""
        unfrozen = tuple(f"{part}." for part in ("encoder", "decoder") if not getattr(self.config, part).frozen)
        return [name for name, _ in self.named_parameters()
                if name.startswith(("adapter.", "ctc_head.") + unfrozen) or "lora_" in name]

    @property
    def supports_ar(self) -> bool:
        """Whether `generate_ar` is meaningful: only a decoder trained with the AR objective."""
        return self.config.objective == "ar"

    def generate_ar(self, audios: Sequence[np.ndarray], max_new_tokens: int, num_beams: int = 1,
                    audio: AudioContext | None = None, initial_prompt: str | None = None,
                    pad_to_seconds: float = 0.0, timestamps: bool = False) -> GeneratedTokens:
        """Autoregressive decoding after the `[prompt | audio]` prefix (the Whisper-LLaMA baseline).
        `audio`: the clips already encoded (`encode_audio(audios)`), to save the encoder pass.
        `initial_prompt`, `timestamps`: refused; only the Whisper family was trained with
        previous-text context and time tokens.
        `pad_to_seconds`: unused (its decoder reads the audio as it was trained, `features`)."""
        if initial_prompt:
            raise ValueError("--initial-prompt: only Whisper-family models take a previous-text prompt")
        if timestamps:
            raise ValueError("--ar-timestamps: only Whisper-family models decode with time tokens")
        embeds, mask = self.prefix(self.encode_audio(audios) if audio is None else audio)
        return ar_generate(self.decoder, embeds, mask, max_new_tokens, num_beams, self.eos_id)

    def no_speech_probs(self, audio: AudioContext) -> Tensor | None:
        """A per-row no-speech probability, (B,); None: this family has no such signal."""
        return None

    def audio_free(self, audio: AudioContext) -> AudioContext:
        """The same batch with no audio embeddings: the text-only deliberation control."""
        empty = audio.embeds[:, :0]
        return AudioContext(empty, torch.zeros_like(audio.lengths), audio.ctc_log_probs, audio.encoder_lengths)

    def pack(self, audio: AudioContext, response: Tensor, response_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Build left-padded decoder inputs `[prompt | audio_i | response_i]`.

        response (B, L, D) embeddings; response_lengths (B,) valid response positions.
        Returns inputs_embeds (B, S, D), attention_mask (B, S) bool, position_ids (B, S).
        """
        batch, length, dim = response.shape
        prompt = self.decoder.embed(self.prompt_ids[None])[0].to(response.dtype)
        width = len(prompt) + int(audio.lengths.max()) + length
        embeds = response.new_zeros(batch, width, dim)
        mask = torch.zeros(batch, width, dtype=torch.bool, device=response.device)
        for row in range(batch):
            n_audio = int(audio.lengths[row])
            start = width - length - n_audio - len(prompt)
            embeds[row, start:start + len(prompt)] = prompt
            embeds[row, start + len(prompt):width - length] = audio.embeds[row, :n_audio].to(response.dtype)
            mask[row, start:width - length] = True
        embeds[:, width - length:] = response
        mask[:, width - length:] = torch.arange(length, device=response.device)[None] < response_lengths[:, None]
        positions = position_ids_from_mask(mask)
        return embeds, mask, positions

    def response_logits(self, audio: AudioContext, tokens: Tensor, lengths: Tensor | None = None,
                        causal: bool = False) -> Tensor:
        """Logits over the response block.

        tokens (B, L) response ids (mask id at undecided positions); lengths (B,) valid positions
        (default: all L). causal=False: bidirectional, logits[:, i] predict tokens[:, i].
        causal=True (AR baseline, teacher forcing): logits[:, i] predict tokens[:, i] from
        everything before it. Returns (B, L, V).
        """
        batch, length = tokens.shape
        if lengths is None:
            lengths = torch.full((batch,), length, device=tokens.device)
        response = self.decoder.embed(tokens)
        embeds, mask, positions = self.pack(audio, response, lengths)
        if causal:
            return self.decoder(embeds, mask, positions, causal=True, num_logits=length + 1)[:, :-1]
        return self.decoder(embeds, mask, positions, num_logits=length)

    def forward(self, features: Tensor, feature_lengths: Tensor, tokens: Tensor,
                lengths: Tensor | None = None, causal: bool = False) -> Tensor:
        """Audio features (B, n_mels, T) + response tokens (B, L) -> response logits (B, L, V)."""
        return self.response_logits(self.encode(features, feature_lengths), tokens, lengths, causal)

    def mask_predictor(self, audio: AudioContext, cache: str = "none") -> Callable[..., Tensor]:
        """A mask predictor for `dllm_asr.decoding.decode` with this batch's audio bound inside.

        cache (docs/algorithms.md 3h): "none" recomputes everything at every step; "static" computes
        the `[prompt | audio]` keys/values of every layer once here, without the response, and each
        call runs only the response against them (exact for a one-layer decoder only); "prefix" and
        "dual" are Fast-dLLM's block-wise caches (`dllm_asr.model.block_cache`), LLaDA decoders only.
        """
        if cache in ("prefix", "dual"):
            if not hasattr(self.decoder, "forward_columns"):
                raise ValueError(f"--cache {cache}: decoder {getattr(self.decoder, 'name', '?')} has no block cache "
                                 "(the LLaDA and Whisper decoders have); use --cache static or none")
            return BlockCachePredictor(SpeechLLMCacheBackend(self, audio), cache)
        if cache == "static":
            return self._cached_mask_predictor(audio)
        if cache != "none":
            raise ValueError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")

        def predict(tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
            return self.response_logits(audio.select(rows.to(audio.lengths.device)), tokens, lengths)

        return predict

    def _cached_mask_predictor(self, audio: AudioContext) -> Callable[..., Tensor]:
        if not hasattr(self.decoder, "compute_prefix_cache"):
            raise ValueError(f"--cache static: decoder {getattr(self.decoder, 'name', type(self.decoder).__name__)} "
                             "does not support a prefix key/value cache")
        embeds, mask = self.prefix(audio)
        positions = position_ids_from_mask(mask)
        cache = self.decoder.compute_prefix_cache(embeds, mask, positions)

        def predict(tokens: Tensor, rows: Tensor, lengths: Tensor) -> Tensor:
            """tokens (B', L) of the rows `rows` (B',), lengths (B',) -> logits (B', L, V)."""
            rows = rows.to(mask.device)
            response_mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
            response = self.decoder.embed(tokens)
            return self.decoder.forward_with_prefix_cache(response, response_mask, cache.select(rows))

        return predict

    def prefix(self, audio: AudioContext) -> tuple[Tensor, Tensor]:
        """Left-padded `[prompt | audio]` embeddings (B, S, D) and mask (B, S) for AR generation."""
        batch = audio.embeds.shape[0]
        empty = audio.embeds.new_zeros(batch, 0, audio.embeds.shape[-1])
        embeds, mask, _ = self.pack(audio, empty, torch.zeros(batch, dtype=torch.long, device=empty.device))
        return embeds, mask

    def _encoder_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype


def prompt_token_ids(tokenizer, prompt: str) -> Tensor:
    """Chat-template prompt through the assistant header (the reference's input order), (P,) long.

    Tokenizers without a chat template get the plain prompt text followed by a newline.
    """
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]
    return torch.tensor(list(ids), dtype=torch.long)


class SpeechLLMCacheBackend:
    """`block_cache.CacheBackend` of a prefix-conditioned decoder (LLaDA): sequences are the
    left-padded `[prompt | audio | response]` of `SpeechLLM.pack`, the response in the last columns."""

    def __init__(self, model: SpeechLLM, audio: AudioContext):
        self.model, self.audio, self.decoder = model, audio, model.decoder

    def full_hidden(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> tuple[Tensor, SequenceCache]:
        audio = self.audio.select(rows.to(self.audio.lengths.device))
        embeds, mask, positions = self.model.pack(audio, self.decoder.embed(tokens), lengths)
        hidden, keys, values = self.decoder.forward_kv(embeds, mask, positions)
        first = embeds.shape[1] - tokens.shape[1]
        return hidden[:, first:], SequenceCache(keys, values, mask, positions, first, 0)

    def window_hidden(self, cache: SequenceCache, tokens: Tensor, columns: Tensor) -> Tensor:
        ids = tokens.gather(1, (columns - cache.first).clamp(0, tokens.shape[1] - 1))
        return self.decoder.forward_columns(self.decoder.embed(ids), cache.positions.gather(1, columns), columns,
                                            cache.keys, cache.values, column_attention_mask(cache, columns))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.decoder.head(hidden)
