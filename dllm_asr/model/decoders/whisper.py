"""Whisper's own text decoder, usable both ways: causally (the pretrained AR model) and as a
masked-diffusion decoder over a response block (docs/default-model.md).

The decoder attends to the encoder output through its pretrained cross-attention, so a
diffusion decoder adapted from it reads the audio from its first training step: there is no
adapter to learn. Two choices follow the literature on adapting AR models into diffusion models
(DiffuLLaMA, arXiv 2410.17891; docs/algorithms.md):

* the *shift*: the hidden state at position i predicts the token at i + 1, exactly as in AR
  training, so the pretrained output alignment is kept. The response block's logits therefore
  come from the positions one to the left of the response (the last prompt token predicts the
  first response token);
* a learned [MASK] embedding (one id past the vocabulary) stands for an undecided token.

Logits cover the text tokens and EOS only (ids 0..eot): Whisper's special and timestamp tokens
are never predicted, as Whisper's own decoding suppresses them, and neither is [MASK].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dllm_asr.model.block_cache import scatter_columns
from dllm_asr.model.decoders.base import DecoderLoadError
from dllm_asr.model.whisper_modules import (WhisperDecoderLayer, WhisperDims, build_uninitialised,
                                            init_whisper_weights)


EXACT_TOP_K = 4
"""A reduced-precision decoder's logits recomputed in float32 per position (`WhisperTextDecoder.logits`)."""
ENGLISH_ONLY_EOT = 50256
"""<|endoftext|>'s id in an English-only Whisper vocabulary (50257 in a multilingual one)."""


class WhisperTokenizer:
    """Whisper's byte-level BPE (``tokenizer.json``) with the conventions of its transcripts.

    Whisper writes a transcript with a leading space (" The cat."), so ``__call__`` adds one;
    ``decode`` drops special tokens (ids past EOS) and strips. Duck-types the parts of a
    transformers tokenizer the toolkit uses: ``__call__(text, add_special_tokens=False)``,
    ``decode(ids, skip_special_tokens=True)``, ``len()``, ``convert_tokens_to_ids``. It reads
    the file with the `tokenizers` library itself (the one transformers' fast tokenizers wrap),
    which gives the same ids and text without importing transformers.
    """

    def __init__(self, tokenizer_file: str | os.PathLike):
        from tokenizers import Tokenizer

        self.fast = Tokenizer.from_file(str(tokenizer_file))
        self.eot = self.token_id("<|endoftext|>")
        self.sot = self.token_id("<|startoftranscript|>")
        self.no_timestamps = self.token_id("<|notimestamps|>")
        vocabulary = self.fast.get_vocab()  # older multilingual vocabularies name it <|nocaptions|>
        self.no_speech = self.token_id("<|nospeech|>" if "<|nospeech|>" in vocabulary else "<|nocaptions|>")
        # English-only checkpoints keep GPT-2's 50,257 text tokens, so <|endoftext|> is 50256;
        # multilingual ones add a token before it. Both vocabularies hold <|en|>, so its presence
        # does not tell them apart (openai-whisper uses the embedding count, n_vocab < 51865).
        self.english_only = self.eot == ENGLISH_ONLY_EOT
        self.blank = self.encode(" ")[0]
        """The lone-space token; Whisper never starts a transcript with it (suppress_blank)."""

    def encode(self, text: str) -> list[int]:
        """The ids of `text` as written (no leading space added, no special tokens)."""
        return self.fast.encode(text, add_special_tokens=False).ids

    def piece(self, token: int) -> str:
        """One token's text, spaces kept (" cat")."""
        return self.fast.decode([int(token)], skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        value = self.fast.token_to_id(token)
        if value is None:
            raise DecoderLoadError(f"Whisper tokenizer has no {token} token")
        return int(value)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.token_id(token)

    def prompt_ids(self, language: str = "en") -> list[int]:
        """Whisper's own decoder prompt for transcription without timestamps, as the pretrained
        decoder was trained: [sot, notimestamps] for an English-only checkpoint, [sot, language,
        transcribe, notimestamps] for a multilingual one."""
        if self.english_only:
            return [self.sot, self.no_timestamps]
        return self.task_prompt_ids(language)

    def previous_text_ids(self, text: str | None, max_tokens: int) -> list[int]:
        """Whisper's context before the prompt: [<|startofprev|>, the last `max_tokens` tokens of
        " " + text], or [] for no text (Whisper's `--initial_prompt`)."""
        if not text or not text.strip():
            return []
        tokens = self.encode(" " + text.strip())
        return [self.token_id("<|startofprev|>")] + tokens[-max_tokens:]

    def task_prompt_ids(self, language: str = "en") -> list[int]:
        """[sot, language, transcribe, notimestamps] whatever the checkpoint: the prompt the
        diffusion decoder is trained and decoded with (every Whisper vocabulary has these tokens;
        the shipped default model was trained with it on tiny.en)."""
        return [self.sot, self.token_id(f"<|{language}|>"), self.token_id("<|transcribe|>"), self.no_timestamps]

    def non_speech_ids(self) -> list[int]:
        """Tokens Whisper's decoding never emits by default (its `suppress_tokens=-1`): those that
        spell a bracket, quote or music symbol that is not speech (by itself or after a space), the
        ones for " -" and " '", and each music note's first token. Suppressing them stops
        "[Music]"-style captions and quoted transcripts that no reference contains."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        notes = list("♩♪♫♬♭♮♯")
        ids = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + notes:
            for pieces in (self.encode(symbol), self.encode(" " + symbol)):
                if len(pieces) == 1 or symbol in notes:
                    ids.add(pieces[0])
        return sorted(i for i in ids if i < self.eot)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        text = text.strip()
        return {"input_ids": self.encode(" " + text if text else "")}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < self.eot]
        return self.fast.decode(ids, skip_special_tokens=False).strip()

    def __len__(self) -> int:
        return self.fast.get_vocab_size(with_added_tokens=True)


@dataclass
class CrossCache:
    """Per-layer keys and values of the encoder output, (B, H, T, hd) each, and its key mask (B, 1, 1, T)."""

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor

    def select(self, rows: Tensor) -> "CrossCache":
        width = int(self.mask[rows].sum(dim=-1).max())
        return CrossCache([k[rows, :, :width] for k in self.keys], [v[rows, :, :width] for v in self.values],
                          self.mask[rows, ..., :width])


class WhisperTextDecoder(nn.Module):
    """Whisper's decoder stack (token + learned position embeddings, pre-norm layers with self- and
    cross-attention, final norm, output tied to the token embedding) with its own forward, so that
    the self-attention mask can be causal, bidirectional or anything between.

    Attributes: ``vocab_size`` (logit width: text tokens + EOS), ``mask_token_id`` (one past the
    embedding table), ``eos_token_id``, ``hidden_size``, ``num_layers``, ``max_positions``.
    Built with random weights (transformers' initialisation), unless under `build_uninitialised`.
    """

    def __init__(self, config: WhisperDims | object, eos_token_id: int):
        super().__init__()
        config = WhisperDims.of(config)
        width = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_target_positions, width)
        self.layers = nn.ModuleList(WhisperDecoderLayer(width, config.decoder_ffn_dim)
                                    for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(width)
        init_whisper_weights(self, config.init_std)
        self.mask_embedding = nn.Parameter(torch.zeros(config.d_model))
        self.config = config
        self.num_heads = config.decoder_attention_heads
        self.hidden_size = config.d_model
        self.num_layers = config.decoder_layers
        self.max_positions = config.max_target_positions
        self.eos_token_id = eos_token_id
        self.vocab_size = eos_token_id + 1
        self.mask_token_id = config.vocab_size
        self.alignment_heads: list[tuple[int, int]] | None = None
        """The checkpoint's (layer, head) cross-attention heads that follow the speech in time
        (Whisper's `alignment_heads`); None: the checkpoint names none (see `word_alignment_heads`)."""

    @property
    def dtype(self) -> torch.dtype:
        """The base weights' dtype (as the other decoders' `dtype`)."""
        return self.embed_tokens.weight.dtype

    def init_mask_embedding(self) -> None:
        """Start [MASK] at the mean token embedding (a neutral point of the input space)."""
        with torch.no_grad():
            self.mask_embedding.copy_(self.embed_tokens.weight[: self.vocab_size].mean(dim=0))

    def embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        """ids (B, S) with `mask_token_id` allowed, positions (B, S) -> (B, S, D)."""
        is_mask = ids == self.mask_token_id
        tokens = self.embed_tokens(ids.masked_fill(is_mask, 0))
        tokens = torch.where(is_mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        return tokens + self.embed_positions.weight[positions].to(tokens.dtype)

    def cross_cache(self, encoder_hidden: Tensor, encoder_lengths: Tensor) -> CrossCache:
        """Keys/values of every layer's cross-attention, computed once per batch of audio.

        encoder_hidden (B, T, d_enc); encoder_lengths (B,) valid frames.
        """
        batch, frames, _ = encoder_hidden.shape
        keys, values = [], []
        for layer in self.layers:
            attention = layer.encoder_attn
            # contiguous per head, so that each decoding step's product reads them without a copy
            keys.append(self._heads(attention.k_proj(encoder_hidden)).contiguous())
            values.append(self._heads(attention.v_proj(encoder_hidden)).contiguous())
        valid = torch.arange(frames, device=encoder_hidden.device)[None] < encoder_lengths.to(encoder_hidden.device)[:, None]
        return CrossCache(keys, values, valid[:, None, None, :])

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        batch, _, length, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.num_heads * head_dim)

    def forward(self, ids: Tensor, positions: Tensor, self_mask: Tensor, cross: CrossCache,
                past: list[tuple[Tensor, Tensor]] | None = None, cross_weights: list[Tensor] | None = None
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Hidden states after the final norm.

        ids (B, S); positions (B, S); self_mask (B, 1, S, S_past + S) bool, True = may attend;
        cross: the batch's `CrossCache`; past: per-layer self-attention keys/values of earlier
        positions (AR decoding with a KV cache), or None. Returns hidden (B, S, D) and the
        per-layer keys/values including these positions. `cross_weights`: a list that receives
        each layer's cross-attention probabilities (B, H, S, T) (word timestamps); None (the
        default) keeps the fused attention kernel.
        """
        def after_past(index: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
            if past is None:
                return keys, values
            return torch.cat([past[index][0], keys], dim=2), torch.cat([past[index][1], values], dim=2)

        return self._layers(self.embed(ids, positions), self_mask, cross, after_past, cross_weights)

    def forward_columns(self, ids: Tensor, positions: Tensor, columns: Tensor, cached: list[tuple[Tensor, Tensor]],
                        self_mask: Tensor, cross: CrossCache) -> Tensor:
        """Recompute the sequence columns ``columns`` (B, W) (inputs ``ids``, ``positions`` (B, W))
        against whole-sequence self-attention keys/values ``cached`` (from ``forward``) with these
        columns' entries replaced at every layer (block caches); self_mask (B, 1, W, T).
        Returns hidden (B, W, D) after the final norm."""
        def in_place_of_columns(index: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
            return scatter_columns(cached[index][0], columns, keys), scatter_columns(cached[index][1], columns, values)

        return self._layers(self.embed(ids, positions), self_mask, cross, in_place_of_columns)[0]

    def _layers(self, x: Tensor, self_mask: Tensor, cross: CrossCache,
                self_keys: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]],
                cross_weights: list[Tensor] | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The layer stack over embedded inputs x (B, S, D); `self_keys(layer index, keys, values)`
        gives the self-attention keys/values the queries see, from x's own (B, H, S, hd);
        `cross_weights`, if a list, receives each layer's cross-attention probabilities."""
        dropout = self.config.dropout if self.training else 0.0
        present = []
        for index, layer in enumerate(self.layers):
            normed = layer.self_attn_layer_norm(x)
            attention = layer.self_attn
            keys, values = self_keys(index, self._heads(attention.k_proj(normed)), self._heads(attention.v_proj(normed)))
            present.append((keys, values))
            context = _attention(self._heads(attention.q_proj(normed)), keys, values, self_mask)
            x = x + F.dropout(attention.out_proj(self._merge(context)), dropout, self.training)
            normed = layer.encoder_attn_layer_norm(x)
            queries = self._heads(layer.encoder_attn.q_proj(normed))
            context = _attention(queries, cross.keys[index], cross.values[index], cross.mask, cross_weights)
            x = x + F.dropout(layer.encoder_attn.out_proj(self._merge(context)), dropout, self.training)
            hidden = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))
            x = x + F.dropout(layer.fc2(hidden), dropout, self.training)
        return self.layer_norm(x), present

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden (..., D) -> logits over text tokens and EOS (..., vocab_size), float32.

        A bfloat16/float16 decoder projects in its own dtype, which is 4x faster than float32
        on a CPU with bf16 matrix instructions, and then recomputes each position's
        `EXACT_TOP_K` largest logits in float32: logits rounded to 8 bits of mantissa tie
        near-equal tokens and confidences, which cost 0.6 WER points on real speech
        (docs/default-model.md, "bfloat16 on a CPU"), and the decisions (argmax, confidence) are
        made among the top few. The other logits keep their rounding (a relative error under
        2^-8), which only the softmax's normaliser reads. With gradients the whole projection is
        float32."""
        weight = self.embed_tokens.weight[: self.vocab_size]
        if weight.dtype == torch.float32:
            return (hidden @ weight.T.to(hidden.dtype)).float()
        if torch.is_grad_enabled() and weight.requires_grad:
            return hidden.float() @ weight.float().T
        rounded = hidden @ weight.T
        top = rounded.topk(EXACT_TOP_K, dim=-1).indices
        exact = torch.einsum("...d,...kd->...k", hidden.float(), self._float32_vocabulary(weight)[top])
        return rounded.float().scatter_(-1, top, exact)

    def _float32_vocabulary(self, weight: Tensor) -> Tensor:
        """`weight` (vocab_size, D) in float32, cached while its storage and version stay the same.
        The copy is kept on the embedding module, which the adapted and the pretrained decoder
        share, so both use one."""
        return cached_while_unchanged(self.embed_tokens, "float32_rows", weight, weight.float)


def cached_while_unchanged(owner: nn.Module, name: str, source: Tensor, make: Callable[[], Tensor]) -> Tensor:
    """`make()`, kept on `owner` as attribute `name` and made again only when `source` (the
    weights it derives from) changes storage, version (an in-place update), device, dtype or shape."""
    key = (source.data_ptr(), source._version, source.device, source.dtype, source.shape)
    cached = getattr(owner, name, None)
    if cached is None or cached[0] != key:
        cached = (key, make())
        setattr(owner, name, cached)
    return cached[1]


def _attention(queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor,
               weights: list[Tensor] | None = None) -> Tensor:
    """Scaled dot-product attention: queries (B, H, S, hd), keys/values (B, H, T, hd), mask
    broadcastable to (B, H, S, T), bool, True = may attend -> context (B, H, S, hd).

    `weights`, if a list, receives the probabilities (B, H, S, T) in float32 (word timestamps).
    PyTorch's fused kernel serves everything else except one case: a single query (a step of AR
    decoding with a KV cache) in bfloat16/float16 on a CPU, where the fused kernel is 7x slower
    than the product written out with a float32 softmax (docs/default-model.md, "Two more bf16
    speed-ups").
    """
    single_low_precision_query = (queries.shape[-2] == 1 and queries.dtype != torch.float32
                                  and queries.device.type == "cpu")
    if weights is None and not single_low_precision_query:
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
    scores = (queries @ keys.transpose(-1, -2)) * queries.shape[-1] ** -0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32)
    if weights is not None:
        weights.append(probs)
    return probs.to(values.dtype) @ values


def word_alignment_heads(decoder: WhisperTextDecoder) -> list[tuple[int, int]]:
    """The (layer, head) pairs whose cross-attention times words: the checkpoint's own
    `alignment_heads`, or, when it names none, every head of the upper half of the layers
    (Whisper's fallback for checkpoints without the list)."""
    if decoder.alignment_heads is not None:
        return list(decoder.alignment_heads)
    return [(layer, head) for layer in range(decoder.num_layers // 2, decoder.num_layers)
            for head in range(decoder.num_heads)]


def read_alignment_heads(path: Path, num_layers: int, num_heads: int) -> list[tuple[int, int]] | None:
    """`alignment_heads` of a Whisper directory: config.json (CTranslate2 keeps it there) or
    generation_config.json (transformers keeps it there); None if neither names any."""
    for name in ("config.json", "generation_config.json"):
        file = path / name
        heads = json.loads(file.read_text(encoding="utf-8")).get("alignment_heads") if file.is_file() else None
        if heads:
            pairs = [(int(layer), int(head)) for layer, head in heads]
            bad = [p for p in pairs if not (0 <= p[0] < num_layers and 0 <= p[1] < num_heads)]
            if bad:
                raise DecoderLoadError(f"{file}: alignment_heads {bad} lie outside the decoder's "
                                       f"{num_layers} layers x {num_heads} heads")
            return pairs
    return None


def whisper_decoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``model.decoder.*`` part of a WhisperForConditionalGeneration state dict, unprefixed."""
    prefix = "model.decoder."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_whisper_text_decoder(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
                              ) -> tuple[WhisperTextDecoder, WhisperTokenizer]:
    """Whisper's pretrained decoder and tokenizer from a CTranslate2 or transformers directory."""
    from dllm_asr.model.ct2 import load_ct2_whisper

    path = Path(model_dir)
    if (path / "model.bin").is_file():
        config, state = load_ct2_whisper(path)
    elif (path / "config.json").is_file():
        from dllm_asr.model.encoders import hf_weight_files
        from safetensors.torch import load_file

        config = WhisperDims.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
        state = {}
        for file in hf_weight_files(path):
            state.update(load_file(str(file)) if file.suffix == ".safetensors" else {})
    else:
        raise DecoderLoadError(f"{path} is not a Whisper model directory (model.bin or config.json)")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise DecoderLoadError(f"{path}: no tokenizer.json beside the Whisper weights")
    tokenizer = WhisperTokenizer(tokenizer_file)
    decoder = build_uninitialised(lambda: WhisperTextDecoder(config, eos_token_id=tokenizer.eot))
    decoder_state = whisper_decoder_state(state)
    if not decoder_state:
        raise DecoderLoadError(f"{path}: the checkpoint has no decoder weights (model.decoder.*)")
    decoder_state["mask_embedding"] = torch.zeros(config.d_model)
    decoder.load_state_dict(decoder_state, strict=True)
    decoder.init_mask_embedding()
    decoder.alignment_heads = read_alignment_heads(path, decoder.num_layers, decoder.num_heads)
    return decoder.to(dtype).eval(), tokenizer


def causal_mask(length: int, past: int, device: torch.device) -> Tensor:
    """(1, 1, length, past + length) bool: position i may see every earlier position and itself."""
    rows = torch.arange(length, device=device)[:, None] + past
    return (torch.arange(past + length, device=device)[None] <= rows)[None, None]


def annealed_mask(length: int, reveal: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Attention-mask annealing (DiffuLLaMA): causal, plus each future key revealed with probability
    `reveal` (0 = causal, 1 = bidirectional). Returns (1, 1, length, length) bool."""
    causal = causal_mask(length, 0, device)
    if reveal >= 1:
        return torch.ones_like(causal)
    if reveal <= 0:
        return causal
    draws = torch.rand(length, length, generator=generator, device=device)[None, None]
    return causal | (draws < reveal)


__all__ = ["CrossCache", "WhisperTextDecoder", "WhisperTokenizer", "annealed_mask", "causal_mask",
           "load_whisper_text_decoder", "word_alignment_heads"]
