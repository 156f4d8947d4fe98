"""Writers of tiny random checkpoints in the real on-disk formats, for tests of the loaders.

``write_tiny_llada_checkpoint`` writes exactly the layout of a LLaDA-8B-Instruct download
(config.json with its field names, safetensors shards + model.safetensors.index.json with the
OLMo-style parameter names, tokenizer.json + tokenizer_config.json), only small and random.
``write_tiny_llama_checkpoint`` writes a Hugging Face LLaMA directory (config.json +
model.safetensors + tokenizer). Both write the weights with plain safetensors/json code that is
independent of the loaders under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a of and to in is was he she it that for on with as his her they at by this had not "
    "but from or have an were one all we there been if more when will would who so no paris "
    "france capital city speech sound word model hello world"
).split()

LLADA_SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|eot_id|>", "[UNK]"]
LLAMA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_word_tokenizer(directory: Path, specials: list[str], roles: dict[str, str],
                         words: tuple[str, ...] | list[str] = WORDS) -> dict[str, int]:
    """Write tokenizer.json (a word-level model over specials + words, whitespace split) and a
    tokenizer_config.json in the style of the Hub's PreTrainedTokenizerFast checkpoints
    (added_tokens_decoder, role tokens, tokenizer_class). ``roles`` maps e.g. "eos_token" to a
    token. Returns the token -> id map."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(list(specials) + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=roles.get("unk_token", specials[0])))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    core.save(str(directory / "tokenizer.json"))
    added = {str(vocab[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for s in specials}
    config = {"added_tokens_decoder": added, **roles, "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab


def _llada_config_json(vocab_size: int, embedding_size: int, mask_id: int, eos_id: int, bos_id: int,
                       d_model: int, n_heads: int, n_kv_heads: int, n_layers: int, mlp_hidden_size: int,
                       rope_theta: float, rms_norm_eps: float) -> dict:
    """The config.json of a LLaDA checkpoint (field names and constant values as in LLaDA-8B-Instruct)."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
        "embedding_dropout": 0.0, "embedding_size": embedding_size, "eos_token_id": eos_id,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": mask_id,
        "max_sequence_length": 4096, "mlp_hidden_size": mlp_hidden_size, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "n_layers": n_layers,
        "pad_token_id": eos_id, "bos_token_id": bos_id, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": rms_norm_eps, "rope": True, "rope_full_precision": True, "rope_theta": rope_theta,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False, "vocab_size": vocab_size,
        "weight_tying": False,
    }


def _llada_state_dict(d_model: int, n_heads: int, n_kv_heads: int, n_layers: int, hidden: int,
                      rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's parameter names. Norm weights are 1 + noise, so a forward that
    forgets to multiply by them is caught."""
    kv_dim = d_model // n_heads * n_kv_heads

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    prefix = "model.transformer"
    state = {f"{prefix}.wte.weight": rand(rows, d_model, scale=1.0)}
    for i in range(n_layers):
        b = f"{prefix}.blocks.{i}"
        state |= {
            f"{b}.attn_norm.weight": 1 + rand(d_model, scale=0.1), f"{b}.ff_norm.weight": 1 + rand(d_model, scale=0.1),
            f"{b}.q_proj.weight": rand(d_model, d_model), f"{b}.k_proj.weight": rand(kv_dim, d_model),
            f"{b}.v_proj.weight": rand(kv_dim, d_model), f"{b}.attn_out.weight": rand(d_model, d_model),
            f"{b}.ff_proj.weight": rand(hidden, d_model), f"{b}.up_proj.weight": rand(hidden, d_model),
            f"{b}.ff_out.weight": rand(d_model, hidden),
        }
    state[f"{prefix}.ln_f.weight"] = 1 + rand(d_model, scale=0.1)
    state[f"{prefix}.ff_out.weight"] = rand(rows, d_model)
    return state


def _write_shards(directory: Path, state: dict[str, torch.Tensor], n_shards: int) -> None:
    """Split ``state`` into ``n_shards`` safetensors files plus the index, as HF sharding does."""
    from safetensors.torch import save_file

    names = list(state)
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for s in range(n_shards):
        file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in names[s * per:(s + 1) * per]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map |= {k: file for k in part}
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_llada_checkpoint(directory: str | Path, d_model: int = 32, n_heads: int = 4, n_kv_heads: int = 4,
                                n_layers: int = 2, mlp_hidden_size: int = 48, rope_theta: float = 500000.0,
                                rms_norm_eps: float = 1e-5, seed: int = 0, n_shards: int = 2,
                                dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random LLaDA checkpoint directory; returns its path. The embedding rows are the
    tokenizer's size rounded up to a multiple of 16 (LLaDA pads 126349 tokens to 126464)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # LLaDA's tokenizer names bos/eos but no mask role: the mask id comes from config.json.
    ids = write_word_tokenizer(directory, LLADA_SPECIALS, {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                                           "pad_token": "<|endoftext|>", "unk_token": "[UNK]"})
    vocab_size = len(ids)
    rows = -(-vocab_size // 16) * 16
    config = _llada_config_json(vocab_size, rows, ids["<|mdm_mask|>"], ids["<|endoftext|>"], ids["<|startoftext|>"],
                                d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size, rope_theta, rms_norm_eps)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    state = _llada_state_dict(d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size, rows, gen)
    _write_shards(directory, {k: v.to(dtype) for k, v in state.items()}, n_shards)
    return directory


def tiny_llama_config(vocab_size: int, **overrides):
    """A small transformers LlamaConfig (2 layers, width 32, GQA 4 -> 2 heads)."""
    from transformers import LlamaConfig

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    values.update(overrides)
    return LlamaConfig(**values)


def write_tiny_llama_checkpoint(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random Hugging Face LLaMA directory (config.json, model.safetensors, tokenizer
    with SmolLM2's special tokens <|endoftext|>, <|im_start|>, <|im_end|>)."""
    from transformers import LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_word_tokenizer(directory, LLAMA_SPECIALS, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                             "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(vocab), **config_overrides))
    with torch.no_grad():  # larger weights than the default init, so positions and context matter
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    model.save_pretrained(str(directory))
    return directory
