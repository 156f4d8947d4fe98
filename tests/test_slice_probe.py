import json

import pytest
import torch

from dllm_asr.cli import main
from dllm_asr.model.decoders import load_decoder
from dllm_asr.tools import slice_probe
from tests.tiny_checkpoints import write_tiny_llama_checkpoint


def test_parse_layers():
    assert slice_probe.parse_layers("all", 4) == [0, 1, 2, 3]
    assert slice_probe.parse_layers("0-1,3", 4) == [0, 1, 3]
    with pytest.raises(ValueError, match="--layers '0-4'"):
        slice_probe.parse_layers("0-4", 4)


def test_keeping_every_layer_is_the_full_model_and_fewer_change_it(tmp_path):
    llama = write_tiny_llama_checkpoint(tmp_path / "llama")
    texts = ["the cat sat on the mat", "a second sentence"]

    def loss_with(layers):
        decoder = load_decoder("hf", llama, dtype="float32")
        if layers is not None:
            decoder.keep_layers(layers)
        return slice_probe.next_token_loss(decoder.hf_model.eval(), decoder.tokenizer, texts)

    full = loss_with(None)
    assert loss_with([0, 1]) == pytest.approx(full)
    first, reordered = loss_with([0]), loss_with([1, 0])
    assert first != pytest.approx(full) and reordered != pytest.approx(full)
    assert torch.isfinite(torch.tensor(first))


def test_the_subcommand_prints_one_line_per_selection(tmp_path, capsys):
    llama = write_tiny_llama_checkpoint(tmp_path / "llama")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one two three", "four five"]))
    assert main(["slice-probe", "--decoder", str(llama), "--texts", str(manifest), "--layers", "all", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("nats/token" in line for line in lines)
