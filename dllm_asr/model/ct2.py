"""Read CTranslate2 ``model.bin`` files in pure Python and map Whisper onto transformers.

Layout of ``model.bin`` (little endian; binary version 6, the one every CTranslate2 Whisper
model uses)::

    u32 binary_version | string spec_name | u32 spec_revision | u32 num_variables
    num_variables x [string name | u8 rank | rank x u32 dim | u8 dtype | u32 num_bytes | bytes]
    u32 num_aliases | num_aliases x [string alias | string target]

where ``string`` is a u16 length (terminating NUL included) followed by the bytes. dtype ids:
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Quantised weights (int8/int16)
come with a ``<name>_scale`` variable and are recovered as ``weight / scale``.

The Whisper spec fuses attention projections: encoder and decoder self-attention
``linear_0`` holds [q; k; v] stacked on the output axis (the key bias slots are zeros, as
Whisper's key projection has no bias), decoder cross-attention ``linear_0`` is q and
``linear_1`` is [k; v]. Layer norms use ``gamma``/``beta``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from dllm_asr.model.whisper_modules import WhisperDims

SUPPORTED_BINARY_VERSION = 6
_NUMPY_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BFLOAT16_ID = 5


class Ct2FormatError(ValueError):
    """A CTranslate2 model file or directory is missing or malformed."""


@dataclass
class Ct2Model:
    """The contents of a ``model.bin``: raw variables (still quantised) and aliases."""

    spec_name: str
    spec_revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """A variable by name (aliases resolved), dequantised to float32 if it is a weight."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise Ct2FormatError(f"CTranslate2 model has no variable {name!r}")
        tensor = self.variables[name]
        scale = self.variables.get(name + "_scale")
        if scale is not None and not tensor.is_floating_point():
            # CTranslate2 quantises as q = round(w * scale), one scale per output row (int8).
            scale = scale.float()
            scale = scale.reshape(-1, *([1] * (tensor.ndim - 1))) if scale.ndim else scale
            return tensor.float() / scale
        return tensor.float() if tensor.is_floating_point() else tensor

    def scalar(self, name: str) -> int:
        """An integer scalar variable such as ``encoder/num_heads``."""
        return int(self.get(name).reshape(-1)[0])


def _read_exact(stream: BinaryIO, size: int, path: Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise Ct2FormatError(f"truncated CTranslate2 model file: {path}")
    return data


def _read_u(stream: BinaryIO, fmt: str, path: Path) -> int:
    return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize(fmt), path))[0]


def _read_string(stream: BinaryIO, path: Path) -> str:
    length = _read_u(stream, "H", path)
    return _read_exact(stream, length, path).rstrip(b"\0").decode("utf-8")


def _read_variable(stream: BinaryIO, path: Path, select: Callable[[str], bool] | None
                   ) -> tuple[str, torch.Tensor | None]:
    """One variable record; its data is skipped (seek) when ``select`` rejects the name."""
    name = _read_string(stream, path)
    keep = select is None or select(name) or select(name.removesuffix("_scale"))
    rank = _read_u(stream, "B", path)
    shape = tuple(_read_u(stream, "I", path) for _ in range(rank))
    dtype_id = _read_u(stream, "B", path)
    num_bytes = _read_u(stream, "I", path)
    if dtype_id not in _NUMPY_DTYPES:
        raise Ct2FormatError(f"unsupported dtype id {dtype_id} for {name!r} in {path}")
    if not keep:
        stream.seek(num_bytes, 1)
        return name, None
    array = np.frombuffer(_read_exact(stream, num_bytes, path), dtype=_NUMPY_DTYPES[dtype_id])
    tensor = torch.from_numpy(array.copy()).reshape(shape)
    if dtype_id == _BFLOAT16_ID:
        tensor = tensor.view(torch.bfloat16)
    return name, tensor


def read_ct2_model(path: str | Path, select: Callable[[str], bool] | None = None) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin``.

    Args:
        path: the ``model.bin`` file.
        select: keep only variables whose name it accepts (others are seeked over), e.g.
            ``lambda name: name.startswith("encoder/")`` to load an encoder alone.
    """
    path = Path(path)
    if not path.is_file():
        raise Ct2FormatError(f"CTranslate2 model file not found: {path}")
    with path.open("rb") as stream:
        version = _read_u(stream, "I", path)
        if version != SUPPORTED_BINARY_VERSION:
            raise Ct2FormatError(f"{path}: CTranslate2 binary version {version} is not supported "
                                 f"(expected {SUPPORTED_BINARY_VERSION})")
        model = Ct2Model(_read_string(stream, path), _read_u(stream, "I", path))
        for _ in range(_read_u(stream, "I", path)):
            name, tensor = _read_variable(stream, path, select)
            if tensor is not None:
                model.variables[name] = tensor
        for _ in range(_read_u(stream, "I", path)):
            alias, target = _read_string(stream, path), _read_string(stream, path)
            model.aliases[alias] = target
    return model


def _split_rows(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Split a fused projection (weight or bias) into equal blocks along the output axis."""
    if tensor.shape[0] % parts:
        raise Ct2FormatError(f"fused projection of {tensor.shape[0]} rows cannot split in {parts}")
    return list(torch.chunk(tensor, parts, dim=0))


def _map_linear(model: Ct2Model, source: str, target: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{target}.weight"] = model.get(f"{source}/weight")
    out[f"{target}.bias"] = model.get(f"{source}/bias")


def _map_layer_norm(model: Ct2Model, source: str, target: str,
                    out: dict[str, torch.Tensor]) -> None:
    out[f"{target}.weight"] = model.get(f"{source}/gamma")
    out[f"{target}.bias"] = model.get(f"{source}/beta")


def _map_attention(model: Ct2Model, source: str, target: str, out: dict[str, torch.Tensor],
                   cross: bool) -> None:
    """Unfuse q/k/v. Self-attention: linear_0 = [q;k;v], linear_1 = out. Cross-attention:
    linear_0 = q, linear_1 = [k;v], linear_2 = out. The key projection has no bias."""
    if cross:
        q_weight = model.get(f"{source}/linear_0/weight")
        q_bias = model.get(f"{source}/linear_0/bias")
        k_weight, v_weight = _split_rows(model.get(f"{source}/linear_1/weight"), 2)
        _, v_bias = _split_rows(model.get(f"{source}/linear_1/bias"), 2)
        out_name = "linear_2"
    else:
        q_weight, k_weight, v_weight = _split_rows(model.get(f"{source}/linear_0/weight"), 3)
        q_bias, _, v_bias = _split_rows(model.get(f"{source}/linear_0/bias"), 3)
        out_name = "linear_1"
    out[f"{target}.q_proj.weight"], out[f"{target}.q_proj.bias"] = q_weight, q_bias
    out[f"{target}.k_proj.weight"] = k_weight
    out[f"{target}.v_proj.weight"], out[f"{target}.v_proj.bias"] = v_weight, v_bias
    _map_linear(model, f"{source}/{out_name}", f"{target}.out_proj", out)


def _map_block(model: Ct2Model, source: str, target: str, out: dict[str, torch.Tensor],
               with_cross_attention: bool) -> None:
    """One pre-norm transformer layer (encoder, or decoder with cross-attention)."""
    _map_attention(model, f"{source}/self_attention", f"{target}.self_attn", out, cross=False)
    _map_layer_norm(model, f"{source}/self_attention/layer_norm",
                    f"{target}.self_attn_layer_norm", out)
    if with_cross_attention:
        _map_attention(model, f"{source}/attention", f"{target}.encoder_attn", out, cross=True)
        _map_layer_norm(model, f"{source}/attention/layer_norm",
                        f"{target}.encoder_attn_layer_norm", out)
    _map_linear(model, f"{source}/ffn/linear_0", f"{target}.fc1", out)
    _map_linear(model, f"{source}/ffn/linear_1", f"{target}.fc2", out)
    _map_layer_norm(model, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm", out)


def count_layers(model: Ct2Model, stack: str) -> int:
    """Number of ``<stack>/layer_<i>`` blocks present (``stack`` is encoder or decoder)."""
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def whisper_encoder_state_dict(model: Ct2Model, prefix: str = "model.encoder."
                               ) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper encoder -> transformers ``WhisperEncoder`` state dict (float32)."""
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _map_linear(model, f"encoder/{conv}", f"{prefix}{conv}", out)
    out[f"{prefix}embed_positions.weight"] = model.get("encoder/position_encodings/encodings")
    for index in range(count_layers(model, "encoder")):
        _map_block(model, f"encoder/layer_{index}", f"{prefix}layers.{index}", out, False)
    _map_layer_norm(model, "encoder/layer_norm", f"{prefix}layer_norm", out)
    return out


def whisper_state_dict(model: Ct2Model) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper -> ``WhisperForConditionalGeneration`` state dict (float32)."""
    out = whisper_encoder_state_dict(model)
    out["model.decoder.embed_tokens.weight"] = model.get("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = model.get("decoder/position_encodings/encodings")
    for index in range(count_layers(model, "decoder")):
        _map_block(model, f"decoder/layer_{index}", f"model.decoder.layers.{index}", out, True)
    _map_layer_norm(model, "decoder/layer_norm", "model.decoder.layer_norm", out)
    # CTranslate2 aliases the output projection to the embeddings; transformers ties them.
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return out


def _special_token_ids(model_dir: Path | None, vocab_size: int) -> dict[str, int]:
    """Whisper's special ids from ``vocabulary.txt`` (one token per line, line = id) or
    ``vocabulary.json``; otherwise from the vocabulary size (51864 = English-only)."""
    tokens: list[str] = []
    if model_dir is not None and (model_dir / "vocabulary.txt").is_file():
        tokens = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    elif model_dir is not None and (model_dir / "vocabulary.json").is_file():
        tokens = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if "<|endoftext|>" in tokens and "<|startoftranscript|>" in tokens:
        eos, start = tokens.index("<|endoftext|>"), tokens.index("<|startoftranscript|>")
    else:
        eos, start = (50256, 50257) if vocab_size == 51864 else (50257, 50258)
    # Whisper's configs: English-only models use <|startoftranscript|> as bos, multilingual
    # ones <|endoftext|>; the pad token is <|endoftext|> in both.
    bos = start if vocab_size == 51864 else eos
    return {"eos_token_id": eos, "pad_token_id": eos, "bos_token_id": bos,
            "decoder_start_token_id": start}


def whisper_config_from_ct2(model: Ct2Model, model_dir: str | Path | None = None) -> WhisperDims:
    """The `WhisperDims` whose shapes match the CTranslate2 variables.

    Decoder sizes are taken from the decoder variables when they were read, otherwise they
    mirror the encoder (enough for an encoder-only load).
    """
    conv1 = model.get("encoder/conv1/weight")
    d_model, n_mels = conv1.shape[0], conv1.shape[1]
    encoder_layers = count_layers(model, "encoder")
    encoder_heads = model.scalar("encoder/num_heads")
    encoder_ffn = model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    has_decoder = "decoder/embeddings/weight" in model.variables
    vocab_size = model.get("decoder/embeddings/weight").shape[0] if has_decoder else 51865
    token_ids = _special_token_ids(Path(model_dir) if model_dir else None, vocab_size)
    return WhisperDims(
        vocab_size=vocab_size, num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=encoder_layers, encoder_attention_heads=encoder_heads,
        encoder_ffn_dim=encoder_ffn,
        decoder_layers=count_layers(model, "decoder") if has_decoder else encoder_layers,
        decoder_attention_heads=model.scalar("decoder/num_heads") if has_decoder else encoder_heads,
        decoder_ffn_dim=(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]
                         if has_decoder else encoder_ffn),
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=(model.get("decoder/position_encodings/encodings").shape[0]
                              if has_decoder else 448),
        **token_ids,
    )


def check_ct2_whisper_dir(model_dir: str | Path) -> Path:
    """``model_dir/model.bin``, after checking that the directory looks like CTranslate2."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise Ct2FormatError(f"CTranslate2 model directory not found: {model_dir}")
    model_bin = model_dir / "model.bin"
    if not model_bin.is_file():
        raise Ct2FormatError(f"{model_dir} is not a CTranslate2 model directory "
                             "(expected model.bin and config.json)")
    return model_bin


def load_ct2_whisper(model_dir: str | Path, encoder_only: bool = False
                     ) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    """Read a CTranslate2 Whisper directory as (config, transformers state dict, float32).

    With ``encoder_only`` the decoder tensors are seeked over, not read, and the state dict
    holds only ``model.encoder.*`` keys.
    """
    model_bin = check_ct2_whisper_dir(model_dir)
    select = (lambda name: name.startswith("encoder/")) if encoder_only else None
    model = read_ct2_model(model_bin, select)
    if model.spec_name != "WhisperSpec":
        raise Ct2FormatError(f"{model_bin} holds a {model.spec_name}, not a WhisperSpec")
    config = whisper_config_from_ct2(model, model_dir)
    state = whisper_encoder_state_dict(model) if encoder_only else whisper_state_dict(model)
    return config, state


def convert_ct2_to_hf(model_dir: str | Path, output_dir: str | Path) -> Path:
    """Write a CTranslate2 Whisper directory as a transformers one (config.json +
    model.safetensors, plus tokenizer.json when present). Returns ``output_dir``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims, state = load_ct2_whisper(model_dir)
    model = WhisperForConditionalGeneration(WhisperConfig(**dims.to_dict()))
    model.load_state_dict(state, strict=True)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer = Path(model_dir) / "tokenizer.json"
    if tokenizer.is_file():
        (output_dir / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return output_dir
