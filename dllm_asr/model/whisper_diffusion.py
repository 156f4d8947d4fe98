"""WhisperDiffusionASR: the default model's family. A frozen Whisper encoder, and Whisper's own
decoder adapted into a masked-diffusion decoder that reads the audio through its pretrained
cross-attention (docs/default-model.md).

The model keeps the unmodified pretrained decoder beside the adapted one: run causally with a KV
cache, it is the AR baseline and the source of AR priors (deliberation, prior-guided decoding),
and it shares the frozen token embedding with the diffusion decoder. A checkpoint stores only
what training changed (the diffusion decoder's layers, positions, norm and [MASK] embedding, and
a CTC head if any); the base weights come from the Whisper checkpoint the config names.

It offers the same methods as `SpeechLLM` (features, encode, response_logits, mask_predictor,
generate_ar, ...), so training, every decoding strategy, evaluation and the CLI work unchanged.
The decoder's response block is `[prompt | response]` with Whisper's prompt
(`<|startoftranscript|><|notimestamps|>` for English-only models); rows are right-padded, since
Whisper's learned positions start at 0 for every row.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dllm_asr.audio.features import CHUNK_SECONDS, SAMPLE_RATE, log_mel_batch, num_frames, zero_pad_frames_to_30s
from dllm_asr.config import ModelConfig
from dllm_asr.model.block_cache import CACHE_MODES, BlockCachePredictor, SequenceCache, column_attention_mask
from dllm_asr.model.checkpoint import check_keep
from dllm_asr.model.decoders.causal import GeneratedTokens
from dllm_asr.model.decoders.whisper import (CrossCache, WhisperTextDecoder, WhisperTokenizer, annealed_mask,
                                             cached_while_unchanged, causal_mask, word_alignment_heads)
from dllm_asr.model.speech_llm import AudioContext, SpeechModel
from dllm_asr.model.whisper_fallback import ARSamples, FALLBACK_BEST_OF, FALLBACK_TEMPERATURES, NO_SPEECH_LIMIT
from dllm_asr.model.whisper_timestamps import apply_timestamp_rules, timed_spans, unfinished_at
from dllm_asr.transcription.options import TranscribeOptions


RESUME_MIN_SECONDS = 0.5
"""Decoding with timestamps, a transcript that stopped short of its clip's end is continued
(Whisper's seek) only from at least this far into the clip, and over at least this much audio."""
TIMESTAMP_ROOM = 24
"""Decoding with timestamps: steps allowed beyond the text's token limit, for the time tokens
(two a segment)."""


class WhisperDiffusionASR(SpeechModel):
    """Whisper encoder + Whisper decoder adapted to masked diffusion (+ the original decoder for AR)."""

    def __init__(self, config: ModelConfig, encoder: nn.Module, decoder: WhisperTextDecoder,
                 base_decoder: WhisperTextDecoder, tokenizer: WhisperTokenizer, ctc_head: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.base_decoder = base_decoder
        self.decoder.embed_tokens = base_decoder.embed_tokens  # one frozen table for both
        self.ctc_head = ctc_head
        self.adapter = None
        self._tokenizer = tokenizer
        self.register_buffer("prompt_ids", torch.tensor(tokenizer.task_prompt_ids(), dtype=torch.long),
                             persistent=False)
        """The adapted (diffusion) decoder's prompt."""
        self.register_buffer("base_prompt_ids", torch.tensor(tokenizer.prompt_ids(), dtype=torch.long),
                             persistent=False)
        """The pretrained decoder's prompt, Whisper's own (2 tokens for an English-only checkpoint)."""
        self.register_buffer("suppress_ids", torch.tensor(tokenizer.non_speech_ids(), dtype=torch.long),
                             persistent=False)
        self.attention_reveal = 1.0
        """Training only: the probability that a response position sees a later one (attention-mask
        annealing; 1.0 = bidirectional, the decoding-time attention). Set by the trainer."""

    # ---------------------------------------------------------------- what callers read

    @property
    def tokenizer(self) -> WhisperTokenizer:
        return self._tokenizer

    @property
    def supports_ar(self) -> bool:
        """The pretrained decoder is kept, so `--strategy ar` runs Whisper's own AR decoding."""
        return True

    def delta_parameter_names(self) -> list[str]:
        """What a checkpoint stores: the adapted decoder (not the shared frozen embedding) and a CTC head."""
        return [name for name, _ in self.named_parameters()
                if (name.startswith("decoder.") and name != "decoder.embed_tokens.weight")
                or name.startswith("ctc_head.")]

    def frozen_parameter_names(self) -> set[str]:
        """Parameters no training stage may change, whatever parts it names."""
        return {"decoder.embed_tokens.weight"}

    @torch.no_grad()
    def interpolate_toward_base(self, keep: float) -> None:
        """Keep the fraction `keep` of what fine-tuning changed in the adapted decoder:
        decoder <- base + keep * (decoder - base), parameter by parameter (WiSE-FT, Wortsman et
        al. 2022, arXiv 2109.01903). The pretrained decoder knows real speech; the fine-tuning
        saw only synthetic voices, and on real recordings part of its change is overfitting
        (docs/default-model.md). `keep` = 1 leaves the model as it is."""
        check_keep(keep)
        base = dict(self.base_decoder.named_parameters())
        for name, param in self.decoder.named_parameters():
            if name in base and base[name] is not param:  # the token table is shared, not adapted
                param.copy_(torch.lerp(base[name].to(param.dtype), param, keep))

    # ---------------------------------------------------------------- audio

    def features(self, audios: Sequence[np.ndarray], pad_to_30s: bool | None = None) -> tuple[Tensor, Tensor]:
        """16 kHz waveforms -> log-mel features (B, n_mels, T) and frame counts (B,). The 30-s
        window is zero-padded in the feature domain, as Whisper's `transcribe` does (see
        `dllm_asr.audio.features.zero_pad_frames_to_30s`)."""
        pad = self.config.encoder.pad_to_30s if pad_to_30s is None else pad_to_30s
        feats, lengths = log_mel_batch(list(audios), n_mels=self.encoder.n_mels, pad_to_30s=False)
        if pad:
            feats = zero_pad_frames_to_30s(feats)
            lengths = torch.full_like(lengths, feats.shape[-1])
        return feats.to(self.device), lengths.to(self.device)

    def encode_for(self, audios: Sequence[np.ndarray], options: TranscribeOptions) -> AudioContext:
        """`--strategy ar` decodes from the AR window (`ar_pad_to_seconds`), so that is the one
        encoder pass it makes (its no-speech probability then comes from the same window, as in
        Whisper); every other strategy reads `encode_audio(audios, options.pad_to_seconds)`."""
        if options.strategy == "ar":
            return self.encode_ar_window(audios, options.ar_pad_to_seconds)
        return super().encode_for(audios, options)

    def encode_ar_window(self, audios: Sequence[np.ndarray], pad_to_seconds: float = 30.0) -> AudioContext:
        """What Whisper's pretrained decoder reads: Whisper's full window of encoder frames (1500).
        At 30 s, each clip with zero log-mel frames appended up to 30 s (longer clips trimmed to
        it), as Whisper encodes it. Shorter: each clip encoded with zero frames up to
        `pad_to_seconds` only, its encoder output then completed to the full window with the
        encoder's output for a window of padding (`complete_with_silence`): S/30 of the encoder
        work, and the decoder reads the 1500 frames it was trained on (docs/default-model.md,
        "A narrow window completed with silence")."""
        if pad_to_seconds >= CHUNK_SECONDS:
            return self.encode(*self.features(audios, pad_to_30s=True))
        groups = length_groups([len(audio) for audio in audios], round(pad_to_seconds * SAMPLE_RATE))
        parts = [self.complete_with_silence(self.encode_audio([audios[i] for i in rows], pad_to_seconds))
                 for rows in groups]
        return parts[0] if len(parts) == 1 else join_rows(parts, groups)

    def complete_with_silence(self, audio: AudioContext) -> AudioContext:
        """`audio` (B, N, d) -> (B, W, d), W = Whisper's window of encoder frames (1500): each row's
        valid frames, then the silent window's frames from that row's length on
        (`silent_window_states`). Rows are then all W long; the CTC outputs and encoder lengths
        stay the clip's own. `audio` itself when every row is W long already."""
        width = self.encoder.num_frames_max // 2
        if bool((audio.lengths >= width).all()):
            return audio
        silent = self.silent_window_states()
        embeds = audio.embeds[:, :width]
        embeds = nn.functional.pad(embeds, (0, 0, 0, width - embeds.shape[1]))
        valid = torch.arange(width, device=embeds.device)[None, :, None] < audio.lengths[:, None, None]
        completed = torch.where(valid, embeds, silent.to(embeds.dtype))
        full = torch.full_like(audio.lengths, width)
        return AudioContext(completed, full, audio.ctc_log_probs,
                            audio.lengths if audio.encoder_lengths is None else audio.encoder_lengths)

    def silent_window_states(self) -> Tensor:
        """The encoder's output (1, W, d) for a 30-s window of zero log-mel frames (the padding
        `encode_ar_window` appends), cached while the encoder's weights stay the same."""
        return cached_while_unchanged(self, "_silent_window", next(self.encoder.parameters()), self._encode_silence)

    @torch.no_grad()
    def _encode_silence(self) -> Tensor:
        frames = self.encoder.num_frames_max
        features = torch.zeros(1, self.encoder.n_mels, frames, device=self.device)
        return self.encode_hidden(features, torch.tensor([frames], device=self.device))[0]

    def reads_ar_window(self, audio: AudioContext, pad_to_seconds: float = 30.0) -> bool:
        """Whether every row of `audio` is at least the AR window of `pad_to_seconds` long, so
        that `generate_ar` can read it as it is (completed with silence if shorter than 30 s)."""
        window = min(num_frames(round(pad_to_seconds * SAMPLE_RATE)), self.encoder.num_frames_max) // 2
        return bool((audio.lengths >= window).all())

    def encode_hidden(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The frozen encoder's output (B, T, d) and valid frames (B,): what training may cache."""
        dtype = next(self.encoder.parameters()).dtype
        return self.encoder(features.to(dtype), feature_lengths)

    def audio_context(self, hidden: Tensor, hidden_lengths: Tensor) -> AudioContext:
        """Encoder output -> AudioContext (the CTC head, if any, is applied here)."""
        ctc = self.ctc_head(hidden.float()) if self.ctc_head is not None else None
        return AudioContext(hidden, hidden_lengths, ctc, hidden_lengths)

    def audio_free(self, audio: AudioContext) -> AudioContext:
        """The text-only control: the encoder's output for silence of one second per row, so the
        decoder hears nothing (cross-attention needs at least one frame)."""
        silence = [np.zeros(16000, dtype=np.float32)] * audio.embeds.shape[0]
        return self.encode_audio(silence)

    # ---------------------------------------------------------------- diffusion

    def _cross(self, audio: AudioContext, decoder: WhisperTextDecoder) -> CrossCache:
        return decoder.cross_cache(audio.embeds.to(decoder.embed_tokens.weight.dtype), audio.lengths)

    def _self_mask(self, prompt: int, length: int, lengths: Tensor, causal: bool,
                   generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, P+L, P+L) bool. Keys past a row's response are hidden; the response block is
        bidirectional (or causal, or annealed during training)."""
        total = prompt + length
        device = lengths.device
        if causal:
            mask = causal_mask(total, 0, device)
        else:
            reveal = self.attention_reveal if self.training else 1.0
            mask = annealed_mask(total, reveal, generator, device)
        keys_valid = torch.arange(total, device=device)[None] < (prompt + lengths)[:, None]
        return mask & keys_valid[:, None, None, :]

    def response_logits(self, audio: AudioContext, tokens: Tensor, lengths: Tensor | None = None,
                        causal: bool = False, cross: CrossCache | None = None,
                        positions: Tensor | None = None) -> Tensor:
        """Logits over the response block, (B, L, V); with `positions` (B, L) bool, only those
        positions' logits, (N, V) in row-major order.

        tokens (B, L) ids (mask id at undecided positions); lengths (B,) valid positions. With the
        shift, logits[:, i] (predicting tokens[:, i]) come from the position before it.
        causal=True: teacher-forced AR logits of the adapted decoder.
        """
        batch, length = tokens.shape
        if lengths is None:
            lengths = torch.full((batch,), length, device=tokens.device)
        prompt = self.prompt_ids.shape[0]
        ids = torch.cat([self.prompt_ids[None].expand(batch, -1), tokens], dim=1)
        position_ids = torch.arange(prompt + length, device=tokens.device)[None].expand(batch, -1)
        mask = self._self_mask(prompt, length, lengths.to(tokens.device), causal)
        cross = self._cross(audio, self.decoder) if cross is None else cross
        hidden, _ = self.decoder(ids, position_ids, mask, cross)
        hidden = hidden[:, prompt - 1: prompt + length - 1]
        return self.decoder.logits(hidden if positions is None else hidden[positions.to(hidden.device)])

    def suppress(self, logits: Tensor) -> Tensor:
        """Decoding only: the non-speech symbol tokens get -inf (Whisper's default suppression;
        `WhisperTokenizer.non_speech_ids`). Training keeps them: a reference may contain one."""
        return logits.index_fill_(-1, self.suppress_ids, float("-inf"))

    def mask_predictor(self, audio: AudioContext, cache: str = "none") -> Callable[..., Tensor]:
        """A mask predictor for `dllm_asr.decoding.decode`. The encoder's keys/values of every
        cross-attention layer are computed once here and reused at every step (exact: they do
        not depend on the response), so "static" has nothing more to cache; "prefix" and "dual"
        are Fast-dLLM's block-wise self-attention caches (`dllm_asr.model.block_cache`)."""
        if cache not in CACHE_MODES:
            raise ValueError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        cross = self._cross(audio, self.decoder)
        selected: dict[tuple[int, ...], CrossCache] = {}  # the last row set's keys/values: it rarely changes

        def cross_of(rows: Tensor) -> CrossCache:
            key = tuple(rows.tolist())
            if key not in selected:
                selected.clear()
                selected[key] = cross.select(rows.to(cross.mask.device))
            return selected[key]

        if cache in ("prefix", "dual"):
            return BlockCachePredictor(WhisperCacheBackend(self, cross_of), cache)

        def predict(tokens: Tensor, rows: Tensor, lengths: Tensor, positions: Tensor | None = None) -> Tensor:
            return self.suppress(self.response_logits(audio, tokens, lengths, cross=cross_of(rows), positions=positions))

        predict.takes_positions = True  # only the positions still to decide are projected onto the vocabulary
        return predict

    @torch.no_grad()
    def no_speech_probs(self, audio: AudioContext) -> Tensor:
        """Whisper's no-speech probability per row, (B,): the pretrained decoder's probability of
        <|nospeech|> right after <|startoftranscript|>, as Whisper computes it. On this model's
        unpadded encoder output it is above 0.9 for silence and noise, below 0.25 for speech
        (docs/default-model.md)."""
        decoder = self.base_decoder
        cross = self._cross(audio, decoder)
        start = self.base_prompt_ids[None, :1].expand(audio.embeds.shape[0], -1)
        hidden, _ = decoder(start, torch.zeros_like(start), causal_mask(1, 0, self.device), cross)
        return self._no_speech_after_start(hidden[:, 0])

    @property
    def supports_word_timestamps(self) -> bool:
        """The pretrained decoder's alignment heads time the words (`dllm_asr.transcription.word_times`)."""
        return True

    @torch.no_grad()
    def alignment_weights(self, audio: AudioContext, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The pretrained decoder run once, causally and teacher-forced, on [prompt | tokens | EOT]:
        what `dllm_asr.transcription.word_times` aligns words with.

        tokens (B, N) text ids, each row's first `lengths` (B,) valid (the rest any id). Returns the
        alignment heads' cross-attention (B, A, N + 1, T) and each token's probability (B, N + 1),
        from the positions that predict tokens 0..N-1 and then EOT (row i: the query predicting
        token i, as in AR training); rows past a row's EOT are padding.
        """
        decoder = self.base_decoder
        batch, length = tokens.shape
        lengths = lengths.to(tokens.device)
        target = torch.cat([tokens, tokens.new_full((batch, 1), self.eos_id)], dim=1)
        target = target.masked_fill(torch.arange(length + 1, device=tokens.device)[None] >= lengths[:, None],
                                    self.eos_id)
        prompt = self.base_prompt_ids.shape[0]
        ids = torch.cat([self.base_prompt_ids[None].expand(batch, -1), target], dim=1)
        positions = torch.arange(ids.shape[1], device=tokens.device)[None].expand(batch, -1)
        weights: list[Tensor] = []
        hidden, _ = decoder(ids, positions, causal_mask(ids.shape[1], 0, tokens.device), self._cross(audio, decoder),
                            cross_weights=weights)
        rows = slice(prompt - 1, prompt + length)
        heads = torch.stack([weights[layer][:, head, rows] for layer, head in word_alignment_heads(decoder)], dim=1)
        probs = decoder.logits(hidden[:, rows]).softmax(-1).gather(-1, target[..., None])[..., 0]
        return heads, probs

    def _no_speech_after_start(self, hidden: Tensor) -> Tensor:
        """P(<|nospeech|>) from the pretrained decoder's hidden state (B, D) at
        <|startoftranscript|>, (B,): the full vocabulary's softmax, as Whisper computes it."""
        logits = hidden @ self.base_decoder.embed_tokens.weight.T.to(hidden.dtype)
        return logits.float().softmax(-1)[:, self.tokenizer.no_speech]

    # ---------------------------------------------------------------- autoregressive

    @torch.no_grad()
    def generate_ar(self, audios: Sequence[np.ndarray], max_new_tokens: int, num_beams: int = 1,
                    audio: AudioContext | None = None, fallback: bool = True,
                    initial_prompt: str | None = None, pad_to_seconds: float = 30.0,
                    timestamps: bool = False) -> GeneratedTokens:
        """Whisper's own decoding with the pretrained decoder and a KV cache, on input padded to
        `pad_to_seconds` (Whisper's 30-s window by default; `encode_ar_window`): greedy, with
        Whisper's temperature fallback (`fallback`; see `FALLBACK_TEMPERATURES`). Special and
        non-speech symbol tokens are suppressed (time tokens too, unless `timestamps`), and EOS
        and a lone space at the first step (Whisper's suppress_blank). `audio`: the clips already
        encoded, reused when every row is at least that window long (`reads_ar_window`). `initial_prompt`: text given
        to every row as Whisper's previous-text context (`ar_prompt_ids`). `timestamps`: decode
        with Whisper's time tokens (`whisper_timestamps`), as its `transcribe` does by default,
        then drop them. Returns one token list per row (text tokens) and `.nfe` (forward passes
        of the network, fallback passes included)."""
        if num_beams != 1:
            raise ValueError("--num-beams: the Whisper AR baseline decodes greedily (num_beams 1)")
        prompt = self.ar_prompt_ids(initial_prompt, timestamps)
        room = TIMESTAMP_ROOM if timestamps else 0
        limit = min(max_new_tokens + room, self.base_decoder.max_positions - prompt.shape[0])
        best, nfe = self._decode_ar_windows(audios, audio, prompt, limit, pad_to_seconds, fallback)
        if timestamps:
            nfe += self._decode_unfinished(best, audios, prompt, limit, pad_to_seconds, fallback)
        return GeneratedTokens(best.tokens, nfe=nfe, confidences=best.token_probs, spans=best.spans)

    def _decode_ar_windows(self, audios: Sequence[np.ndarray], audio: AudioContext | None, prompt: Tensor,
                           limit: int, pad_to_seconds: float, fallback: bool) -> tuple[ARSamples, int]:
        """`generate_ar`'s greedy pass over the clips, with its fallbacks. Returns the rows and the
        forward passes made."""
        if audio is None or not self.reads_ar_window(audio, pad_to_seconds):
            audio = self.encode_ar_window(audios, pad_to_seconds)
        cross = self._cross(self.complete_with_silence(audio), self.base_decoder)
        best = self._sample_ar(cross, prompt, limit, temperature=0.0)
        nfe = best.nfe
        if fallback:
            rows = list(range(len(audios)))
            if pad_to_seconds < CHUNK_SECONDS:
                rows, cross, wide_nfe = self._doubtful_rows_from_30s(best, audios, prompt, limit)
                nfe += wide_nfe
            nfe += self._temperature_fallback(best, rows, cross, prompt, limit)
        return best, nfe

    def _decode_unfinished(self, best: ARSamples, audios: Sequence[np.ndarray], prompt: Tensor, limit: int,
                           pad_to_seconds: float, fallback: bool) -> int:
        """Whisper's seek, for rows decoded with timestamps whose transcript stopped short of the
        clip's end (`whisper_timestamps.unfinished_at`): the rest of the clip, from the last time
        token on, is decoded as a clip of its own and its text appended to the row, in place in
        `best`, until a transcript covers its clip, the rest sounds silent (Whisper's test) or is
        shorter than `RESUME_MIN_SECONDS`. Returns the forward passes made."""
        nfe, starts = 0, [0] * len(audios)  # per row, the sample its latest pass began at
        rows, latest = list(range(len(audios))), best
        while True:
            going_on = []
            for j, i in enumerate(rows):
                stop = latest.unfinished_at[j]
                if stop is None or stop < RESUME_MIN_SECONDS or latest.is_silent(j):
                    continue
                start = starts[i] + round(stop * SAMPLE_RATE)
                if len(audios[i]) - start >= RESUME_MIN_SECONDS * SAMPLE_RATE:
                    going_on.append(i)
                    starts[i] = start
            if not going_on:
                return nfe
            rows = going_on
            latest, passes = self._decode_ar_windows([audios[i][starts[i]:] for i in rows], None, prompt, limit,
                                                     pad_to_seconds, fallback)
            nfe += passes
            for j, i in enumerate(rows):
                if not latest.is_silent(j):
                    best.append(i, latest, j, starts[i] / SAMPLE_RATE)

    def _doubtful_rows_from_30s(self, best: ARSamples, audios: Sequence[np.ndarray], prompt: Tensor, limit: int
                                ) -> tuple[list[int], CrossCache | None, int]:
        """The rows of a narrow window's greedy pass that fail Whisper's checks (a loop, an
        unlikely transcript) or sound silent, decoded greedily again from Whisper's 30-s window,
        in place in `best`: the safety net under a narrow window (docs/default-model.md, "The AR
        decoder's window"). Returns those rows, their 30-s `CrossCache` and the passes made."""
        rows = [i for i in range(len(audios)) if best.needs_fallback(i) or best.no_speech[i] > NO_SPEECH_LIMIT]
        if not rows:
            return rows, None, 0
        cross = self._cross(self.encode_ar_window([audios[i] for i in rows]), self.base_decoder)
        wide = self._sample_ar(cross, prompt, limit, temperature=0.0)
        best.replace(rows, wide)
        return rows, cross, wide.nfe

    def _temperature_fallback(self, best: ARSamples, rows: list[int], cross: CrossCache | None, prompt: Tensor,
                              limit: int) -> int:
        """Whisper's temperature fallback for the rows `rows` of `best` (in place), whose audio
        is `cross`'s rows in that order. Returns the forward passes it made."""
        generator = torch.Generator(device=self.device).manual_seed(0)  # the same transcript every run
        nfe = 0
        for temperature in FALLBACK_TEMPERATURES:
            redo = [j for j, i in enumerate(rows) if best.needs_fallback(i)]
            if not redo:
                break
            picked = torch.tensor(redo, device=self.device).repeat_interleave(FALLBACK_BEST_OF)
            tried = self._sample_ar(cross.select(picked), prompt, limit, temperature, generator)
            nfe += tried.nfe
            best.keep_better([rows[j] for j in redo], tried.best_of(FALLBACK_BEST_OF))
        return nfe

    def ar_prompt_ids(self, initial_prompt: str | None = None, timestamps: bool = False) -> Tensor:
        """The pretrained decoder's whole prompt, (P,): Whisper's previous-text context for
        `initial_prompt` (<|startofprev|> and at most the text's last max_positions // 2 - 1
        tokens, Whisper's cut), then `base_prompt_ids` (without its closing <|notimestamps|>
        when decoding with `timestamps`)."""
        context = self.tokenizer.previous_text_ids(initial_prompt, self.base_decoder.max_positions // 2 - 1)
        base = self.base_prompt_ids[:-1] if timestamps else self.base_prompt_ids
        return torch.cat([torch.tensor(context, dtype=torch.long, device=self.device), base])

    def _sample_ar(self, cross: CrossCache, prompt: Tensor, limit: int, temperature: float,
                   generator: torch.Generator | None = None) -> "ARSamples":
        """One causal decoding pass over every row of `cross` after `prompt` (P,): greedy at
        temperature 0, sampled from softmax(logits / temperature) otherwise. A prompt without
        <|notimestamps|> (`ar_prompt_ids(..., timestamps=True)`) decodes with Whisper's time
        tokens under its timestamp rules; they are dropped from the rows, and their
        log-probabilities from the rows' sums."""
        decoder = self.base_decoder
        timestamps = int(prompt[-1]) != self.tokenizer.no_timestamps
        batch = cross.mask.shape[0]
        ids = prompt[None].expand(batch, -1)
        positions = torch.arange(ids.shape[1], device=self.device)[None].expand(batch, -1)
        hidden, past = decoder(ids, positions, causal_mask(ids.shape[1], 0, self.device), cross)
        start = int((prompt == self.tokenizer.sot).nonzero()[-1])  # <|startoftranscript|>, after any context
        first_time = decoder.vocab_size  # compact id of the 0.00-s time token (ids below: text and EOS)
        no_speech = self._no_speech_after_start(hidden[:, start])
        out = torch.full((batch, 0), self.eos_id, dtype=torch.long, device=self.device)
        logprob = torch.zeros(batch, device=self.device)
        token_probs = []  # per step (B,): the chosen token's probability under the greedy softmax
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        nfe = 1
        for step in range(limit):
            logits = self.suppress(decoder.logits(hidden[:, -1]))
            if step == 0:  # Whisper's suppress_blank
                logits[:, [self.eos_id, self.tokenizer.blank]] = float("-inf")
            if timestamps:
                logits = apply_timestamp_rules(torch.cat([logits, self._time_logits(hidden[:, -1])], dim=-1),
                                               out.tolist(), first_time, self.eos_id)
            if temperature > 0:
                probs = (logits / temperature).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            token = token.masked_fill(done, self.eos_id)
            token_logprob = logits.log_softmax(-1).gather(1, token[:, None])[:, 0]
            token_probs.append(token_logprob.exp())
            logprob += token_logprob.masked_fill(done | (token >= first_time), 0.0)
            out = torch.cat([out, token[:, None]], dim=1)
            done |= token == self.eos_id
            if bool(done.all()) or step == limit - 1:
                break
            position = torch.full((batch, 1), ids.shape[1] + step, device=self.device)
            fed = torch.where(token >= first_time, token - first_time + self.tokenizer.no_timestamps + 1, token)
            hidden, past = decoder(fed[:, None], position, causal_mask(1, past[0][0].shape[2], self.device),
                                   cross, past)
            nfe += 1
        rows = [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in out.tolist()]
        probs = torch.stack(token_probs, dim=1).tolist() if token_probs else [[] for _ in rows]
        text = [[j for j, token in enumerate(row) if token < first_time] for row in rows]
        return ARSamples.scored([[row[j] for j in keep] for row, keep in zip(rows, text)], logprob.tolist(),
                                no_speech.tolist(), self.tokenizer.decode, nfe,
                                [[p[j] for j in keep] for p, keep in zip(probs, text)],
                                [unfinished_at(row, first_time) if timestamps else None for row in rows],
                                [timed_spans(row, first_time) if timestamps else None for row in rows])

    def _time_logits(self, hidden: Tensor) -> Tensor:
        """hidden (B, D) -> float32 logits (B, 1501) of Whisper's time tokens 0.00 ... 30.00 s,
        which `WhisperTextDecoder.logits` leaves out. Their float32 rows are made once, not at
        every step."""
        table = self.base_decoder.embed_tokens
        rows = table.weight[self.tokenizer.no_timestamps + 1:]
        return hidden.float() @ cached_while_unchanged(table, "float32_time_rows", rows, rows.float).T


def length_groups(lengths: Sequence[int], step: int) -> list[list[int]]:
    """Row indices grouped by how many `step`s their length spans (at least one), in order of
    first appearance: [3, 25, 8, 14] with step 10 -> [[0, 2], [1], [3]]. A group padded to its
    longest row pads each row by less than one step."""
    groups: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        groups.setdefault(max(1, -(-length // step)), []).append(row)
    return list(groups.values())


def join_rows(parts: Sequence[AudioContext], groups: Sequence[Sequence[int]]) -> AudioContext:
    """The rows of `parts` (part k holds the rows `groups[k]`, each encoded to the same width)
    as one batch in row order; CTC outputs are zero-padded to the longest."""
    order = torch.tensor([row for rows in groups for row in rows])
    inverse = torch.argsort(order).to(parts[0].embeds.device)  # where each row sits in the concatenation
    embeds = torch.cat([part.embeds for part in parts])[inverse]
    lengths = torch.cat([part.lengths for part in parts])[inverse]
    ctc = None
    if parts[0].ctc_log_probs is not None:
        frames = max(part.ctc_log_probs.shape[1] for part in parts)
        ctc = torch.cat([nn.functional.pad(part.ctc_log_probs, (0, 0, 0, frames - part.ctc_log_probs.shape[1]))
                         for part in parts])[inverse]
    encoder_lengths = None
    if parts[0].encoder_lengths is not None:
        encoder_lengths = torch.cat([part.encoder_lengths for part in parts])[inverse]
    return AudioContext(embeds, lengths, ctc, encoder_lengths)


class WhisperCacheBackend:
    """`block_cache.CacheBackend` of the adapted Whisper decoder: sequences are `[prompt | response]`
    (audio enters through cross-attention), and the output at column P - 1 + j predicts token j."""

    def __init__(self, model: WhisperDiffusionASR, cross_of: Callable[[Tensor], CrossCache]):
        self.model, self.cross_of, self.decoder = model, cross_of, model.decoder

    def _ids(self, tokens: Tensor) -> Tensor:
        return torch.cat([self.model.prompt_ids[None].expand(tokens.shape[0], -1), tokens], dim=1)

    def full_hidden(self, tokens: Tensor, rows: Tensor, lengths: Tensor) -> tuple[Tensor, SequenceCache]:
        prompt, length = self.model.prompt_ids.shape[0], tokens.shape[1]
        ids = self._ids(tokens)
        positions = torch.arange(prompt + length, device=tokens.device)[None].expand(tokens.shape[0], -1)
        mask = self.model._self_mask(prompt, length, lengths.to(tokens.device), causal=False)
        hidden, present = self.decoder(ids, positions, mask, self.cross_of(rows))
        keys_valid = mask[:, 0].any(dim=1)
        cache = SequenceCache([k for k, _ in present], [v for _, v in present], keys_valid, positions,
                              prompt - 1, 1)
        return hidden[:, prompt - 1: prompt - 1 + length], cache

    def window_hidden(self, cache: SequenceCache, tokens: Tensor, columns: Tensor) -> Tensor:
        rows = torch.tensor(cache.rows, device=tokens.device)
        cached = list(zip(cache.keys, cache.values))
        return self.decoder.forward_columns(self._ids(tokens).gather(1, columns), cache.positions.gather(1, columns),
                                            columns, cached, column_attention_mask(cache, columns), self.cross_of(rows))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.suppress(self.decoder.logits(hidden))
