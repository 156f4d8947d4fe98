"""`dllm-asr slice-probe`: is a decoder slice still a language model?

    dllm-asr slice-probe --texts data/synth/dev.jsonl --layers all 0-3 0-7 0-15 0-3,26-29

Prints the causal next-token loss (nats per token) of the pretrained decoder keeping only the
listed layers, on the transcripts of a JSONL manifest. A CPU run is tempted to train on the first
layers only (`model.decoder.num_layers`); this shows what that does to the pretrained LM before
any training (SmolLM2-135M: 5.0 nats with all 30 layers, 18.8 with the first 4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from dllm_asr.model.decoders import load_decoder


def parse_layers(text: str, total: int) -> list[int]:
    """"all" -> every layer; "0-3,26-29" -> [0, 1, 2, 3, 26, 27, 28, 29]."""
    if text == "all":
        return list(range(total))
    layers: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        layers.extend(range(int(first), int(last or first) + 1))
    if not layers or min(layers) < 0 or max(layers) >= total:
        raise ValueError(f"--layers {text!r}: layers must lie in 0-{total - 1}")
    return layers


def next_token_loss(hf_model: nn.Module, tokenizer, texts: list[str]) -> float:
    """Mean causal next-token loss (nats per predicted token) of `hf_model` on `texts`."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            logits = hf_model(input_ids=ids, use_cache=False).logits
            total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / max(count, 1)


def slice_losses(decoder_source: str, texts_path: str | Path, max_texts: int,
                 layer_specs: list[str]) -> Iterator[tuple[str, int, float]]:
    """Per layer set ("all", "0-3,26-29", ...): (the set, layers kept, next-token loss in nats per
    token) of the pretrained decoder `decoder_source` on the first `max_texts` texts of a JSONL manifest."""
    lines = Path(texts_path).read_text().splitlines()[:max_texts]
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    for spec in layer_specs:
        decoder = load_decoder("hf", decoder_source)  # afresh: a slice drops the other layers
        layers = parse_layers(spec, decoder.num_layers)
        decoder.keep_layers(layers)
        yield spec, len(layers), next_token_loss(decoder.hf_model.eval(), decoder.tokenizer, texts)
