"""What the engine's approximations and numerics do to transcripts: numerics, caches, dtypes.

A benchmark that prints a table, not a test. The same clips are decoded with the same strategy
under each variant; the table gives WER (Whisper's English normaliser), RTF, mean forward passes
(NFE) and how many transcripts differ from the strategy's first variant (the plain one).

--compare numerics: "exact" (the engine's default: float64 probabilities from a float32
  normaliser, ties to the lower position) against "reference" (softmax in the model's dtype,
  torch.topk's tie order, as LLaDA's code), for each --dtypes model precision;
--compare cache: no cache against "static" (prompt+audio keys/values once per batch), and
  Fast-dLLM's "prefix" and "dual" block caches (docs/algorithms.md 3h).

    python benchmarks/decoding_variants.py --compare cache --data data/real/asterisk.jsonl
    python benchmarks/decoding_variants.py --compare cache --random-llada  # token agreement only

With --random-llada the model is a randomly initialised LLaDA-shaped decoder behind a random
adapter (no meaningful WER): the table then reports how many transcripts and tokens agree.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from dllm_asr.config import DEFAULT_MODEL
from dllm_asr.data.manifests import load_dataset
from dllm_asr.evaluation.evaluate import evaluate_utterances
from dllm_asr.model.loading import build_model, load_model
from dllm_asr.transcription.strategies import model_options

STRATEGIES = {
    "diffusion 16 steps": {"strategy": "diffusion", "steps": 16},
    "semi-AR 4 blocks, 16 steps": {"strategy": "semi-ar", "steps": 16, "num_blocks": 4},
    "threshold 0.9": {"strategy": "threshold", "threshold": 0.9},
}
VARIANTS = {
    "numerics": [{"numerics": "exact"}, {"numerics": "reference"}],
    "cache": [{"cache": "none"}, {"cache": "static"}, {"cache": "prefix"}, {"cache": "dual"}],
}


def random_llada(layers: int, width: int):
    """A random LLaDA-shaped model (Whisper tiny.en-sized random encoder, Q-Former adapter)."""
    from dllm_asr.config import AdapterConfig, DecoderConfig, EncoderConfig, ModelConfig

    encoder = EncoderConfig(source="random", random_config=dict(
        d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
        decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=1536, vocab_size=64))
    decoder = DecoderConfig(kind="llada", source="random", random_config=dict(
        d_model=width, n_heads=8, n_kv_heads=8, n_layers=layers, mlp_hidden_size=4 * width, seed=0))
    config = ModelConfig(encoder=encoder, adapter=AdapterConfig(kind="qformer", hidden_size=256, num_heads=4),
                         decoder=decoder, max_response_tokens=64)
    torch.manual_seed(0)
    return build_model(config).eval()


def decode_all(model, utterances, options, batch_size: int):
    """(transcripts by id: (text, tokens), WER %, RTF, mean NFE) of one run."""
    report = evaluate_utterances(model, utterances, options, batch_size=batch_size, warmup=False)
    runs = {k: (t.text, t.tokens) for k, t in report.transcripts.items()}
    nfe = sum(t.nfe for t in report.transcripts.values()) / max(1, len(report.transcripts))
    return runs, 100 * report.scores.wer, report.rtf, nfe


def token_agreement(runs: dict, baseline: dict) -> float:
    """Share of token positions equal to the baseline's (over the baseline's tokens), in %."""
    same = total = 0
    for key, (_, tokens) in runs.items():
        reference = baseline[key][1]
        same += sum(a == b for a, b in zip(tokens, reference))
        total += max(len(reference), len(tokens))
    return 100 * same / max(1, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=sorted(VARIANTS), required=True, help="which variants to run")
    parser.add_argument("--data", required=True, help="JSONL manifest of clips with exact transcripts")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or shipped model name")
    parser.add_argument("--random-llada", action="store_true", help="a random LLaDA-shaped model instead")
    parser.add_argument("--llada-layers", type=int, default=4, help="layers of the random LLaDA")
    parser.add_argument("--llada-width", type=int, default=256, help="width of the random LLaDA")
    parser.add_argument("--max-utterances", type=int, default=100, help="clips taken from the manifest's start")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="model dtypes (float32 bfloat16 float16)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips decoded together")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utterances = load_dataset(args.data)[: args.max_utterances]
    print(f"{len(utterances)} clips of {args.data}; differing / tokens agreeing: against the strategy's "
          f"first row (float32, {VARIANTS[args.compare][0]})\n")
    print("| dtype | strategy | variant | WER % | RTF | NFE | differing | tokens agreeing % |")
    print("|---|---|---|---|---|---|---|---|")
    baseline: dict[str, dict] = {}
    for dtype in args.dtypes:
        model = random_llada(args.llada_layers, args.llada_width).to(getattr(torch, dtype)) if args.random_llada \
            else load_model(args.model, device="cpu", dtype=dtype)
        for name, strategy in STRATEGIES.items():
            for variant in VARIANTS[args.compare]:
                options = replace(model_options(model, **strategy), length=24 if args.random_llada else None,
                                  **variant)
                runs, wer, rtf, nfe = decode_all(model, utterances, options, args.batch_size)
                first = baseline.setdefault(name, runs)
                differing = sum(runs[k][0] != first[k][0] for k in runs)
                label = ", ".join(f"{k} {v}" for k, v in variant.items())
                print(f"| {dtype} | {name} | {label} | {wer:.2f} | {rtf:.3f} | {nfe:.1f} | {differing}/{len(runs)} "
                      f"| {token_agreement(runs, first):.1f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
