import json

import pytest
import torch

from dllm_asr import slice_probe
from dllm_asr.decoders import load_decoder
from tests.tiny_checkpoints import write_tiny_llama_checkpoint


def test_parse_layers():
    assert slice_probe.parse_layers("all", 4) == [0, 1, 2, 3]
    assert slice_probe.parse_layers("0-1,3", 4) == [0, 1, 3]
    with pytest.raises(ValueError, match="--layers '0-4'"):
        slice_probe.parse_layers("0-4", 4)


def test_keeping_every_layer_is_the_full_model_and_fewer_change_it(tmp_path):
    decoder = load_decoder("hf", write_tiny_llama_checkpoint(tmp_path / "llama"), dtype="float32")
    hf_model = decoder.hf_model.eval()
    layers = list(hf_model.model.layers)
    texts = ["the cat sat on the mat", "a second sentence"]
    full = slice_probe.next_token_loss(hf_model, decoder.tokenizer, texts)
    slice_probe.keep_layers(hf_model, [0], layers)
    first = slice_probe.next_token_loss(hf_model, decoder.tokenizer, texts)
    slice_probe.keep_layers(hf_model, list(range(len(layers))), layers)
    assert slice_probe.next_token_loss(hf_model, decoder.tokenizer, texts) == pytest.approx(full)
    assert first != pytest.approx(full) and torch.isfinite(torch.tensor(first))


def test_main_prints_one_line_per_selection(tmp_path, capsys):
    llama = write_tiny_llama_checkpoint(tmp_path / "llama")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one two three", "four five"]))
    assert slice_probe.main(["--decoder", str(llama), "--texts", str(manifest), "--layers", "all", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("nats/token" in line for line in lines)
