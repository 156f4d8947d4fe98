"""LLaDA (Nie et al., 2025): a LLaMA-like transformer with bidirectional attention, trained as a
masked-diffusion LM. A native PyTorch module that loads a LLaDA-8B-(Base|Instruct) checkpoint
directory (config.json, safetensors shards, tokenizer files) without remote code.

Block (pre-norm, as in the LLaDA "llama" block):
    h = h + attn_out(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = RMSNorm_attn(h)
    h = h + ff_out(silu(ff_proj(n)) * up_proj(n)),                              n = RMSNorm_ff(h)
logits = ff_out(RMSNorm_f(h)) (untied unless ``weight_tying``).
RMSNorm(x) = w * x / sqrt(mean(x^2) + eps); RoPE rotates the two halves of each head (as LLaMA).
"""
from __future__ import annotations

import json
import os
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dllm_asr.model.block_cache import scatter_columns
from dllm_asr.model.decoders.base import (DecoderLM, DecoderLoadError, attention_mask_4d, check_slice,
                                          resolve_dtype)
from dllm_asr.model.decoders.prefix_cache import PrefixCache, cached_attention_mask, response_positions

# Used only when config.json lacks the fields (they are the LLaDA-8B tokenizer's ids).
LLADA_DEFAULT_MASK_ID = 126336  # <|mdm_mask|>
LLADA_DEFAULT_EOS_ID = 126081  # <|endoftext|>, also LLaDA's response padding token
LLADA_END_OF_TURN_ID = 126348  # <|eot_id|>, ends an Instruct answer before the EOS padding


@dataclass(frozen=True)
class LLaDAConfig:
    """The config.json fields of a LLaDA checkpoint that define the network (same names)."""

    d_model: int
    n_heads: int
    n_layers: int
    vocab_size: int
    n_kv_heads: int | None = None  # None: as many as n_heads
    mlp_hidden_size: int | None = None  # None: mlp_ratio * d_model
    mlp_ratio: int = 4
    embedding_size: int | None = None  # rows of wte / ff_out (vocab padded); None: vocab_size
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = LLADA_DEFAULT_MASK_ID
    eos_token_id: int = LLADA_DEFAULT_EOS_ID
    weight_tying: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    activation_type: str = "silu"
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def output_size(self) -> int:
        return self.embedding_size or self.vocab_size


# Options of the LLaDA/OLMo config that change the network; we implement only these values.
_REQUIRED_VALUES = {
    "activation_type": "silu", "block_type": "llama", "layer_norm_type": "rms", "rope": True,
    "alibi": False, "input_emb_norm": False, "attention_layer_norm": False, "scale_logits": False,
    "multi_query_attention": None, "clip_qkv": None,
}


def read_llada_config(directory: str | os.PathLike) -> LLaDAConfig:
    """Parse ``directory/config.json`` into an LLaDAConfig; a clear error names what is wrong."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise DecoderLoadError(f"LLaDA checkpoint {directory}: missing config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DecoderLoadError(f"{path}: not valid JSON ({err})") from None
    for key, wanted in _REQUIRED_VALUES.items():
        if key in raw and raw[key] != wanted and not (wanted is None and raw[key] is False):
            raise DecoderLoadError(f"{path}: unsupported {key}={raw[key]!r} (this loader implements {wanted!r})")
    missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if raw.get(k) is None]
    if missing:
        raise DecoderLoadError(f"{path}: missing field(s) {', '.join(missing)}")
    known = {f.name for f in fields(LLaDAConfig)}
    values = {k: v for k, v in raw.items() if k in known and v is not None}
    config = LLaDAConfig(**values)
    if config.d_model % config.n_heads or config.n_heads % config.kv_heads:
        raise DecoderLoadError(f"{path}: d_model={config.d_model}, n_heads={config.n_heads}, "
                               f"n_kv_heads={config.kv_heads} are not divisible")
    return config


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps), normalised in at least float32 as LLaDA does."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(work)
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin (B, 1, S, head_dim) for positions (B, S): angle p * theta^(-2i/head_dim),
    the frequencies repeated for the two halves of the head."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=dtype) / head_dim))
    angles = position_ids.to(dtype)[..., None] * inv_freq  # (B, S, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, S, hd) by the position angles: x*cos + rotate_half(x)*sin, where
    rotate_half([a, b]) = [-b, a] over the two halves of the head (computed in cos's dtype)."""
    xf = x.to(cos.dtype)
    first, second = xf.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    """One pre-norm transformer block; parameter names are those of the LLaDA checkpoint."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        d, kv_dim, hidden = config.d_model, config.kv_heads * config.head_dim, config.hidden_size
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)  # gate: goes through SiLU
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)

    def attention(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  past: tuple[torch.Tensor, torch.Tensor] | None = None, columns: torch.Tensor | None = None):
        """x (B, S, D) -> (output (B, S, D), this segment's keys and values (B, kv_heads, S, hd)).

        ``past``: cached keys/values (B, kv_heads, P, hd) of a prefix, placed before x's own;
        mask is then (B, 1, S, P + S). With ``columns`` (B, S), ``past`` holds whole sequences
        (B, kv_heads, T, hd) and x's keys/values replace those columns (block caches; mask
        (B, 1, S, T))."""
        batch, seq, _ = x.shape
        cfg = self.config
        q = self.q_proj(x).view(batch, seq, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is None:
            keys, values = k, v
        elif columns is not None:
            keys, values = scatter_columns(past[0], columns, k), scatter_columns(past[1], columns, v)
        else:
            keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if cfg.kv_heads != cfg.n_heads:  # grouped-query attention: kv head j serves a run of q heads
            group = cfg.n_heads // cfg.kv_heads
            keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.attn_out(out.transpose(1, 2).reshape(batch, seq, cfg.d_model)), (k, v)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, columns: torch.Tensor | None = None):
        """h (B, S, D) -> (h (B, S, D), this segment's keys/values); see ``attention``."""
        attended, key_values = self.attention(self.attn_norm(h), mask, cos, sin, past, columns)
        h = h + attended
        x = self.ff_norm(h)
        return h + self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x)), key_values


class LLaDADecoder(DecoderLM):
    """The LLaDA network as a DecoderLM. ``self.model.transformer`` mirrors the checkpoint's
    ``model.transformer.*`` names, so a checkpoint's state dict loads with no renaming and
    LoRA targets "q_proj", "k_proj", "v_proj" find 3 modules per layer."""

    def __init__(self, config: LLaDAConfig, tokenizer=None, name: str = "llada"):
        super().__init__()
        self.config = config
        transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.output_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
        })
        if not config.weight_tying:
            transformer["ff_out"] = nn.Linear(config.d_model, config.output_size, bias=config.include_bias)
        self.model = nn.Module()
        self.model.transformer = transformer
        self.tokenizer = tokenizer
        self.name = name
        self.hidden_size = config.d_model
        self.num_layers = config.n_layers
        self.vocab_size = config.output_size
        self.mask_token_id = config.mask_token_id
        self.eos_token_id = config.eos_token_id
        self.end_of_turn_token_id = _token_id(tokenizer, "<|eot_id|>")

    def init_weights_(self, seed: int | None = None) -> LLaDADecoder:
        """Random init (normal, std ``init_std``; norms to one; biases to zero) for tests."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                    param.fill_(1.0)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                    param.copy_(noise * self.config.init_std)
        return self

    def keep_first_layers(self, count: int) -> None:
        blocks = self.model.transformer["blocks"]
        check_slice(count, len(blocks), self.name)
        self.model.transformer["blocks"] = nn.ModuleList(list(blocks)[:count])
        self.config = dataclasses.replace(self.config, n_layers=count)
        self.num_layers = count

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, S) -> embeddings (B, S, d_model)."""
        return self.model.transformer["wte"](ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, causal: bool = False, num_logits: int | None = None) -> torch.Tensor:
        """inputs_embeds (B, S, D), attention_mask (B, S) bool, position_ids (B, S) -> logits (B, S, V),
        or (B, num_logits, V) for the last `num_logits` positions only (the LM head is costly)."""
        h, _, _ = self.forward_kv(inputs_embeds, attention_mask, position_ids, causal)
        return self.head(h if num_logits is None else h[:, h.shape[1] - num_logits:])

    def forward_kv(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                   causal: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The last block's output (B, S, D), before ``head``, and every layer's keys and values
        (B, kv_heads, S, hd) after RoPE."""
        mask = attention_mask_4d(attention_mask, causal).to(inputs_embeds.device)
        cos, sin = self._rope(position_ids, inputs_embeds)
        h, keys, values = inputs_embeds, [], []
        for block in self.model.transformer["blocks"]:
            h, (k, v) = block(h, mask, cos, sin)
            keys.append(k)
            values.append(v)
        return h, keys, values

    def forward_columns(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, columns: torch.Tensor,
                        keys: list[torch.Tensor], values: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Recompute the sequence columns ``columns`` (B, W) from their inputs (B, W, D) at
        ``position_ids`` (B, W), against whole-sequence ``keys``/``values`` from ``forward_kv`` with
        these columns' entries replaced at every layer; mask (B, 1, W, T). Returns (B, W, D) before ``head``."""
        cos, sin = self._rope(position_ids, inputs_embeds)
        h = inputs_embeds
        for block, k, v in zip(self.model.transformer["blocks"], keys, values):
            h, _ = block(h, mask, cos, sin, past=(k, v), columns=columns)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, S, D) -> logits (B, S, V)."""
        tr = self.model.transformer
        h = tr["ln_f"](h)
        if self.config.weight_tying:
            return F.linear(h, tr["wte"].weight)
        return tr["ff_out"](h)

    def _rope(self, position_ids: torch.Tensor, like: torch.Tensor):
        rope_dtype = torch.promote_types(like.dtype, torch.float32)  # RoPE in full precision
        return rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, rope_dtype)

    def compute_prefix_cache(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor) -> PrefixCache:
        """Run the left-padded prefix (B, P, D) alone (bidirectional, key padding ``attention_mask``
        (B, P)) and keep every layer's keys/values. The prefix never sees the response: the
        Fast-dLLM approximation, exact for a one-layer network."""
        _, keys, values = self.forward_kv(inputs_embeds, attention_mask, position_ids)
        return PrefixCache(keys, values, attention_mask.bool(), attention_mask.long().sum(dim=1))

    def forward_with_prefix_cache(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                                  cache: PrefixCache) -> torch.Tensor:
        """Logits (B, L, V) of a response block (B, L, D) with key padding ``attention_mask`` (B, L),
        attending to ``cache`` (same B rows) and to itself, bidirectionally."""
        response_mask = attention_mask.bool().to(inputs_embeds.device)
        mask = cached_attention_mask(cache.mask, response_mask)
        cos, sin = self._rope(response_positions(cache.lengths, response_mask), inputs_embeds)
        h = inputs_embeds
        for block, k, v in zip(self.model.transformer["blocks"], cache.keys, cache.values):
            h, _ = block(h, mask, cos, sin, past=(k, v))
        return self.head(h)


def _token_id(tokenizer, token: str) -> int | None:
    if tokenizer is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else None


def _shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those named by model.safetensors.index.json, or
    the single model.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise DecoderLoadError(f"{index}: not a safetensors index ({err!r})") from None
        names = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        raise DecoderLoadError(f"LLaDA checkpoint {directory}: no model.safetensors.index.json or model.safetensors")
    files = [directory / n for n in names]
    for file in files:
        if not file.is_file():
            raise DecoderLoadError(f"LLaDA checkpoint {directory}: missing shard {file.name}")
    return files


def _load_shards_into(decoder: LLaDADecoder, files: list[Path], dtype: torch.dtype, device: torch.device) -> None:
    """Assign every tensor of every shard to the (meta-initialised) decoder, one shard at a time,
    so peak memory is the model plus one shard, never two copies of the model."""
    from safetensors import safe_open

    expected = {k: v.shape for k, v in decoder.state_dict().items()}
    loaded: set[str] = set()
    for file in files:
        tensors = {}
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            for key in handle.keys():
                if key not in expected:
                    raise DecoderLoadError(f"{file}: unexpected parameter {key!r} (not a LLaDA parameter name)")
                tensor = handle.get_tensor(key)
                if tensor.shape != expected[key]:
                    raise DecoderLoadError(f"{file}: parameter {key} has shape {tuple(tensor.shape)}, "
                                           f"config.json implies {tuple(expected[key])}")
                tensors[key] = tensor.to(dtype)
        decoder.load_state_dict(tensors, strict=False, assign=True)
        loaded.update(tensors)
        del tensors
    missing = sorted(set(expected) - loaded)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        names = ", ".join(missing[:3])
        raise DecoderLoadError(f"LLaDA checkpoint {files[0].parent}: missing parameter(s) {names}{more}")


def load_tokenizer(directory: Path, what: str = "LLaDA checkpoint"):
    """The directory's transformers tokenizer, never running remote code. With a tokenizer.json
    (LLaDA ships one; its tokenizer_class is PreTrainedTokenizerFast) the fast tokenizer is built
    from it directly: AutoTokenizer would first parse config.json, whose auto_map names LLaDA's
    remote code."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        raise DecoderLoadError(f"{what} {directory}: missing tokenizer.json / tokenizer_config.json")
    try:
        if (directory / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers raises many kinds; the message names the directory
        raise DecoderLoadError(f"{what} {directory}: cannot load tokenizer ({type(err).__name__}: {err})") from None


def load_llada(directory: str | os.PathLike, dtype: torch.dtype | str = torch.bfloat16,
               device: str | torch.device = "cpu") -> LLaDADecoder:
    """Load a LLaDA checkpoint directory (config.json, safetensors shards + index, tokenizer
    files) as a LLaDADecoder in ``dtype`` on ``device``, in eval mode."""
    path = Path(directory)
    if not path.is_dir():
        raise DecoderLoadError(f"LLaDA checkpoint {directory}: not a directory")
    dtype, device = resolve_dtype(dtype), torch.device(device)
    config = read_llada_config(path)
    files = _shard_files(path)
    tokenizer = load_tokenizer(path)
    with torch.device("meta"):  # no memory for the parameters until the shards are assigned
        decoder = LLaDADecoder(config, tokenizer=tokenizer, name=f"llada:{path.name}")
    _load_shards_into(decoder, files, dtype, device)
    return decoder.eval()
