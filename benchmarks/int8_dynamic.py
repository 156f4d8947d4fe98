"""What dynamic int8 quantisation of the default model does to its speed and its transcripts.

A benchmark that prints a table, not a test (issue 16: "int8 dynamic quantisation where WER
holds"). The same clips are decoded with the model's own decoding, first in float32, then with
parts of the model's matrix products in int8 (torch's dynamic quantisation: int8 weights,
activations quantised on the fly per call):

  encoder   every Linear layer of the Whisper encoder;
  decoder   every Linear layer of the adapted diffusion decoder (attention and feed-forward);
  logits    the projection onto the vocabulary (tied to the token embedding, so not a Linear
            layer: an int8 copy of the table does it).

--per-channel quantises each output row of a weight with its own scale instead of one per matrix.
The table gives WER (Whisper's English normaliser), RTF, mean forward passes and how many
transcripts differ from float32's. float32 runs first and last, so machine drift shows.

    python benchmarks/int8_dynamic.py --data data/real/asterisk.jsonl --max-utterances 326 --skip 160 --per-channel
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.data.manifests import load_dataset
from dllm_asr.model.loading import load_model
from dllm_asr.transcription.strategies import model_options

from decoding_variants import decode_all  # benchmarks/, the script's own folder, is on sys.path

VARIANTS = {"float32": (), "int8 logits": ("logits",), "int8 encoder": ("encoder",),
            "int8 decoder + logits": ("decoder", "logits"), "int8 all": ("encoder", "decoder", "logits")}


class Int8Projection(nn.Module):
    """hidden (..., D) -> float32 logits (..., V) through an int8 copy of a (V, D) weight."""

    def __init__(self, weight: Tensor, per_channel: bool) -> None:
        super().__init__()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data.copy_(weight.float())
        self.linear = int8(nn.Sequential(linear), per_channel)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.float())


def int8(module: nn.Module, per_channel: bool) -> nn.Module:
    """`module` with every Linear layer dynamically quantised to int8."""
    spec = {nn.Linear: per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    return quantize_dynamic(module, spec, dtype=torch.qint8)


def quantised_model(name: str, parts: tuple[str, ...], per_channel: bool):
    model = load_model(name, device="cpu").eval()
    if "encoder" in parts:
        model.encoder = int8(model.encoder, per_channel)
    if "decoder" in parts:
        model.decoder = int8(model.decoder, per_channel)
    if "logits" in parts:
        decoder = model.decoder
        projection = Int8Projection(decoder.embed_tokens.weight[: decoder.vocab_size].detach(), per_channel)
        decoder.logits = lambda hidden: projection(hidden)  # an instance attribute shadows the class's method
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="JSONL manifest of clips with exact transcripts")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    parser.add_argument("--skip", type=int, default=0, help="clips skipped at the manifest's start")
    parser.add_argument("--max-utterances", type=int, default=160, help="clips taken after the skipped ones")
    parser.add_argument("--per-channel", action="store_true", help="one scale per weight row")
    parser.add_argument("--batch-size", type=int, default=8, help="clips decoded together")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utterances = load_dataset(args.data)[args.skip: args.skip + args.max_utterances]
    print(f"{len(utterances)} clips of {args.data} (from clip {args.skip}); "
          f"{'per-channel' if args.per_channel else 'per-tensor'} weight scales\n")
    print("| variant | WER % | RTF | NFE | differing from float32 |")
    print("|---|---|---|---|---|")
    baseline = None
    for label, parts in [*VARIANTS.items(), ("float32 again", ())]:
        model = quantised_model(args.model, parts, args.per_channel)
        runs, wer, rtf, nfe = decode_all(model, utterances, model_options(model), args.batch_size)
        baseline = baseline or runs
        differing = sum(runs[k][0] != baseline[k][0] for k in runs)
        print(f"| {label} | {wer:.2f} | {rtf:.3f} | {nfe:.1f} | {differing}/{len(runs)} |", flush=True)


if __name__ == "__main__":
    main()
