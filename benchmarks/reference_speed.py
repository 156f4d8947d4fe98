"""Decoding throughput, side by side: the Whisper-LLaDA reference loop against dllm-asr's engine.

This is a benchmark that prints a table, not a test: nothing passes or fails, and the figures
depend on the machine and whatever else runs on it.

Both sides decode with ONE randomly initialised, seeded LLaDA-shaped network (the project's
`LLaDADecoder`, wrapped in a `SpeechLLM`), the same prompt ids, the same random "audio" embeddings
(standing in for the Q-Former output) and a response block of --gen-len masks, greedily
(temperature 0, low-confidence remasking):

  * reference: `WhisperLLaDA.transcribe` from models/WhisperLLaDA.py of the user's clone of
    liuzhan22/Diffusion-ASR (--reference), loaded at run time and never copied here. Its
    `models.Qformer` import is replaced by an empty stub (no BERT download), and the method is
    called unbound on a small shim that supplies the tokenizer's EOS id and the reference class's
    own `get_num_transfer_tokens` / `add_gumbel_noise`. The network is offered to it behind the
    call it makes, `model(inputs_embeds=...).logits` and `model.get_input_embeddings()`, over the
    full [prompt | audio | response] sequence, as in the paper's code;
  * dllm-asr: `dllm_asr.decoding.decode` over `SpeechLLM.mask_predictor(audio, cache=...)`, one
    entry of ENGINE_MODES per cache mode (a new mode is one more entry there).

The network's output layer has a bias: +--eos-bias on EOS, so that a random network ends some
responses early, and -1e4 on [MASK], so that neither side ever predicts [MASK] (a trained LLaDA
does not; the engine excludes it from the argmax, the reference does not).

What is measured, for every decoding setting (SETTINGS) and batch size b:
  * utterances/s: the first max(b, --min-rows) rows decoded in calls of b rows, divided by the
    wall time; each system is timed --repeats times, interleaved with the others (the order
    rotates between repeats), and the median is kept;
  * identical: rows of the system's batch-b output equal, token for token up to the first EOS,
    to the reference's batch-1 output for the same row. The reference ends EVERY row of a batch
    at the first EOS it commits in the batch, so its batched output is not the reference for a
    row; a column of its own counts how many of its batch-b rows differ from its batch-1 rows.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from dllm_asr.config import ModelConfig
from dllm_asr.decoding import DecodeOptions, MaskPredictor, decode
from dllm_asr.model.decoders.llada import LLaDAConfig, LLaDADecoder
from dllm_asr.model.speech_llm import AudioContext, SpeechLLM

REFERENCE_FILE = Path("models") / "WhisperLLaDA.py"
REFERENCE_METHODS = ("transcribe", "get_num_transfer_tokens", "add_gumbel_noise")
MASK_LOGIT_BIAS = -1.0e4
ATTENTION_SHARPNESS = 2.0
"""Scale of the query/key weights: sharper attention makes each response position read different
audio positions, so the random network's predictions vary along the response."""


# ----------------------------------------------------------------------------- what is compared


@dataclass(frozen=True)
class Shape:
    """An LLaDA-shaped network, plus the sequence it decodes."""

    name: str
    config: LLaDAConfig
    prompt_len: int
    audio_len: int


SHAPES = {
    # Small enough for a 2-core CPU. The ids sit where LLaDA-8B's do, counted from the end of
    # the (padded) vocabulary.
    "small": Shape("small", LLaDAConfig(d_model=256, n_heads=4, n_layers=2, vocab_size=2048, mlp_hidden_size=768,
                                        mask_token_id=2048 - 128, eos_token_id=2048 - 383, rope_theta=500000.0),
                   prompt_len=16, audio_len=64),
    # LLaDA-8B-Instruct's config.json; 352 audio embeddings = the reference's 30 s Whisper window
    # cut into 88 windows of 4 Q-Former queries.
    "8b": Shape("8b", LLaDAConfig(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, vocab_size=126464,
                                  mlp_hidden_size=12288, mask_token_id=126336, eos_token_id=126081,
                                  rope_theta=500000.0),
                prompt_len=16, audio_len=352),
}


@dataclass(frozen=True)
class Setting:
    """A decoding setting: `block_length` None = one block over the whole response (pure
    diffusion); `tokens_per_step` fixes the steps at gen_len / tokens_per_step."""

    key: str
    block_length: int | None
    tokens_per_step: int

    def steps(self, gen_len: int) -> int:
        return gen_len // self.tokens_per_step

    def title(self, gen_len: int) -> str:
        blocks = f"blocks of {self.block_length}" if self.block_length else "one block (pure diffusion)"
        return f"{self.key}: {blocks}, {self.steps(gen_len)} steps for {gen_len} tokens"


SETTINGS = [Setting("semi-ar", 32, 1), Setting("diffusion", None, 2)]


@dataclass(frozen=True)
class EngineMode:
    """One way to run dllm-asr's engine: the predictor's key/value cache, and DecodeOptions changes."""

    name: str
    cache: str
    options: dict = field(default_factory=dict)

    def predictor(self, model: SpeechLLM, audio: AudioContext) -> MaskPredictor:
        return model.mask_predictor(audio, cache=self.cache)


# `SpeechLLM.mask_predictor`'s caches (docs/algorithms.md 3h): none = every position recomputed
# at every step, as the reference does; static = the [prompt | audio] keys/values once per call;
# prefix / dual = Fast-dLLM's block-wise caches. Only "none" is exact.
ENGINE_MODES = [
    EngineMode("dllm-asr", "none"),
    EngineMode("dllm-asr static", "static"),
    EngineMode("dllm-asr prefix", "prefix"),
    EngineMode("dllm-asr dual", "dual"),
]


# ----------------------------------------------------------------------------- the reference


def fail(message: str) -> None:
    """Exit with a one-line error."""
    sys.exit(f"reference_speed.py: {message}")


def load_reference_class(clone: Path | None) -> type:
    """The WhisperLLaDA class of the user's clone, imported with its Q-Former import stubbed out."""
    if clone is None:
        fail("--reference PATH is required: a clone of https://github.com/liuzhan22/Diffusion-ASR")
    source = clone / REFERENCE_FILE
    if not source.is_file():
        fail(f"--reference {clone}: no {REFERENCE_FILE} there (expected a clone of liuzhan22/Diffusion-ASR)")
    stubs = {"models": types.ModuleType("models"), "models.Qformer": types.ModuleType("models.Qformer")}
    stubs["models"].__path__ = []
    stubs["models.Qformer"].BertConfig = stubs["models.Qformer"].BertLMHeadModel = None
    if importlib.util.find_spec("peft") is None:  # used only by the reference's training setup
        stubs["peft"] = types.ModuleType("peft")
        stubs["peft"].LoraConfig = stubs["peft"].get_peft_model = stubs["peft"].TaskType = None
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("reference_whisper_llada", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as err:  # any failure to import the user's file ends here, in one line
        fail(f"--reference {clone}: cannot import {REFERENCE_FILE} ({type(err).__name__}: {err})")
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    cls = getattr(module, "WhisperLLaDA", None)
    missing = [m for m in REFERENCE_METHODS if not callable(getattr(cls, m, None))]
    if cls is None or missing:
        fail(f"--reference {clone}: {REFERENCE_FILE} has no WhisperLLaDA with {', '.join(missing or REFERENCE_METHODS)}")
    return cls


class ReferenceShim:
    """What `WhisperLLaDA.transcribe` reads from `self`: the tokenizer's EOS id and two helpers,
    all taken from the reference class itself (its methods are called unbound on this object)."""

    def __init__(self, reference: type, eos_id: int):
        self.reference = reference
        self.tokenizer = types.SimpleNamespace(eos_token_id=eos_id)

    def get_num_transfer_tokens(self, mask_index: Tensor, steps: int) -> Tensor:
        return self.reference.get_num_transfer_tokens(self, mask_index, steps)

    def add_gumbel_noise(self, logits: Tensor, temperature: float) -> Tensor:
        return self.reference.add_gumbel_noise(self, logits, temperature)

    def transcribe(self, *args, **kwargs):
        return self.reference.transcribe(self, *args, **kwargs)


class InputsEmbedsLM(nn.Module):
    """The project's LLaDA decoder behind the Hugging Face call the reference makes:
    `model(inputs_embeds=x).logits` over the whole sequence, and `model.get_input_embeddings()`."""

    def __init__(self, decoder: LLaDADecoder):
        super().__init__()
        self.decoder = decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.model.transformer["wte"]

    def forward(self, inputs_embeds: Tensor) -> types.SimpleNamespace:
        batch, length, _ = inputs_embeds.shape
        mask = torch.ones(batch, length, dtype=torch.bool, device=inputs_embeds.device)
        positions = torch.arange(length, device=inputs_embeds.device).expand(batch, length)
        return types.SimpleNamespace(logits=self.decoder(inputs_embeds, mask, positions))


# ----------------------------------------------------------------------------- the network


class PromptTokenizer:
    """The one tokenizer call SpeechLLM makes (its prompt ids), answered with fixed random ids."""

    chat_template = None

    def __init__(self, ids: list[int], eos_id: int):
        self.ids, self.eos_token_id = ids, eos_id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": list(self.ids)}


def parameter_count(config: LLaDAConfig) -> int:
    """Parameters of the network (embedding, blocks, output layer with its bias)."""
    d, kv, hidden, vocab = config.d_model, config.kv_heads * config.head_dim, config.hidden_size, config.output_size
    block = 2 * d * d + 2 * d * kv + 3 * d * hidden + 2 * d
    return vocab * d + config.n_layers * block + d + vocab * d + vocab


def check_memory(shape: Shape, device: torch.device, dtype: torch.dtype, batch: int) -> None:
    """Fail in one line, before allocating, when the weights plus the reference's largest
    activations (logits and their softmax over the whole batch-`batch` sequence) cannot fit, or
    when the 8B shape is asked for anywhere but on a GPU."""
    elem = torch.finfo(dtype).bits // 8
    length = shape.prompt_len + shape.audio_len + 128
    need = parameter_count(shape.config) * elem + 3 * batch * length * shape.config.output_size * max(elem, 4)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    if need > free or (shape.name == "8b" and device.type != "cuda"):
        fail(f"--shape {shape.name} needs about {need / 2**30:.0f} GiB on {device} ({dtype}), "
             f"{free / 2**30:.0f} GiB available{'' if device.type == 'cuda' else ', and hours on a CPU'}; "
             "run it on a GPU with enough memory (--device cuda)")


def init_random_(decoder: LLaDADecoder, seed: int, logit_scale: float, eos_bias: float) -> None:
    """Seeded random weights: embeddings N(0, 1), linear layers N(0, 1/fan_in) (queries and keys
    ATTENTION_SHARPNESS times that std), unit norms, output layer N(0, logit_scale^2/d_model)
    plus the EOS/[MASK] bias (see the module docstring)."""
    device = decoder.model.transformer["wte"].weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    head = decoder.model.transformer["ff_out"]
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight") or name.endswith("bias"):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("wte.weight"):
                param.normal_(0.0, 1.0, generator=gen)
            else:
                std = param.shape[1] ** -0.5 * (logit_scale if param is head.weight else 1.0)
                std *= ATTENTION_SHARPNESS if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
                param.normal_(0.0, std, generator=gen)
        head.bias[decoder.eos_token_id] = eos_bias
        head.bias[decoder.mask_token_id] = MASK_LOGIT_BIAS


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int, logit_scale: float,
                eos_bias: float, max_batch: int) -> SpeechLLM:
    """The one network both sides run: built on the meta device, checked against the free memory,
    then materialised on `device` and initialised there."""
    config = shape.config
    with torch.device("meta"):
        decoder = LLaDADecoder(config, name=f"random-llada-{shape.name}")
        decoder.model.transformer["ff_out"] = nn.Linear(config.d_model, config.output_size, bias=True)
    check_memory(shape, device, dtype, max_batch)
    decoder = decoder.to(dtype).to_empty(device=device)
    init_random_(decoder, seed, logit_scale, eos_bias)
    gen = torch.Generator().manual_seed(seed + 1)
    reserved = {config.mask_token_id, config.eos_token_id}
    prompt = [t for t in torch.randint(0, config.vocab_size, (4 * shape.prompt_len,), generator=gen).tolist()
              if t not in reserved][: shape.prompt_len]
    decoder.tokenizer = PromptTokenizer(prompt, config.eos_token_id)
    model = SpeechLLM(ModelConfig(), encoder=nn.Identity(), adapter=nn.Identity(), decoder=decoder)
    return model.to(device).eval()


def random_audio(model: SpeechLLM, shape: Shape, count: int, seed: int) -> Tensor:
    """`count` rows of random stand-in audio embeddings, (count, audio_len, d_model)."""
    gen = torch.Generator().manual_seed(seed + 2)
    audio = torch.randn(count, shape.audio_len, shape.config.d_model, generator=gen)
    return audio.to(device=model.device, dtype=model.decoder.dtype)


# ----------------------------------------------------------------------------- one decode each


def response(tokens: list[int], eos_id: int) -> tuple[int, ...]:
    """A row's response: its tokens before the first EOS."""
    return tuple(tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens)


def run_reference(shim: ReferenceShim, lm: InputsEmbedsLM, model: SpeechLLM, audio: Tensor, gen_len: int,
                  setting: Setting) -> list[tuple[int, ...]]:
    """The reference loop on rows `audio` (b, A, D); its inputs built as its `generate` builds them."""
    batch, prompt = audio.shape[0], model.prompt_ids[None].expand(audio.shape[0], -1)
    x = torch.zeros(batch, prompt.shape[1] + audio.shape[1] + gen_len, dtype=torch.long, device=audio.device)
    x[:, : prompt.shape[1]] = prompt
    x[:, prompt.shape[1] + audio.shape[1]:] = model.mask_id
    masks = lm.get_input_embeddings()(x[:, prompt.shape[1] + audio.shape[1]:])
    x_emb = torch.cat([lm.get_input_embeddings()(prompt), audio, masks], dim=1)
    out, offset = shim.transcribe(lm, x, x_emb, prompt, audio, steps=setting.steps(gen_len), gen_length=gen_len,
                                  block_length=setting.block_length or gen_len, temperature=0.0, cfg_scale=0.0,
                                  remasking="low_confidence", mask_id=model.mask_id)
    return [response(row, model.eos_id) for row in out[:, offset:].tolist()]


def run_engine(mode: EngineMode, model: SpeechLLM, audio: Tensor, gen_len: int, setting: Setting,
               numerics: str = "exact") -> list[tuple[int, ...]]:
    """dllm-asr's engine on the same rows (`numerics`: DecodeOptions.numerics)."""
    lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
    predictor = mode.predictor(model, AudioContext(audio, lengths))
    options = DecodeOptions(mask_id=model.mask_id, eos_id=model.eos_id, steps=setting.steps(gen_len),
                            block_length=setting.block_length,
                            temperature=0.0, remasking="low_confidence", numerics=numerics, **mode.options)
    init = torch.full((audio.shape[0], gen_len), model.mask_id, dtype=torch.long, device=audio.device)
    with torch.no_grad():
        result = decode(predictor, init, options)
    return [tuple(row) for row in result.sequences()]


# ----------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    """One system at one batch size: wall times of the repeats, and the rows it produced."""

    count: int
    seconds: list[float] = field(default_factory=list)
    rows: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Utterances per second, from the median wall time."""
        return self.count / statistics.median(self.seconds)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(run: Callable[[Tensor], list[tuple[int, ...]]], audio: Tensor, batch: int) -> tuple[float, list]:
    """Decode every row of `audio` in calls of `batch` rows; (seconds, rows)."""
    synchronize(audio.device)
    start = time.perf_counter()
    rows = [row for lo in range(0, audio.shape[0], batch) for row in run(audio[lo:lo + batch])]
    synchronize(audio.device)
    return time.perf_counter() - start, rows


def measure(systems: dict[str, Callable[[Tensor], list]], audio: Tensor, batch: int, repeats: int,
            log: Callable[[str], None]) -> dict[str, Cell]:
    """Every system `repeats` times on the rows `audio` in calls of `batch` rows, interleaved,
    the order rotating between repeats."""
    cells = {name: Cell(audio.shape[0]) for name in systems}
    names = list(systems)
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            seconds, rows = timed_pass(systems[name], audio, batch)
            cells[name].seconds.append(seconds)
            if not cells[name].rows:
                cells[name].rows = rows
            elif rows != cells[name].rows:
                log(f"  warning: {name} at batch {batch} gave different rows on repeat {repeat + 1}")
            log(f"  batch {batch:>2}, repeat {repeat + 1}: {name:<22} {len(rows)} rows {seconds:8.2f} s")
    return cells


def identical(rows: list, baseline: list) -> str:
    """"same/total": rows equal to the baseline's row (the reference run one row at a time)."""
    return f"{sum(a == b for a, b in zip(rows, baseline))}/{len(rows)}"


def table(results: dict[int, dict[str, Cell]], baseline: list, engine: list[str]) -> str:
    """One setting's results as a Markdown table: per engine mode of `engine`, "utt/s, speed-up
    over the reference, rows identical to the reference run one row at a time"."""
    head = ["batch", "rows", "reference utt/s", "reference rows differing from its batch 1"] + engine
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for batch, cells in results.items():
        reference = cells["reference"]
        same = sum(a == b for a, b in zip(reference.rows, baseline))
        row = [str(batch), str(reference.count), f"{reference.rate:.2f}", f"{reference.count - same}/{reference.count}"]
        row += [f"{cells[n].rate:.2f}, {cells[n].rate / reference.rate:.1f}x, {identical(cells[n].rows, baseline)}"
                for n in engine]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def length_summary(rows: list[tuple[int, ...]], gen_len: int) -> str:
    lengths = sorted(len(r) for r in rows)
    full = sum(n == gen_len for n in lengths)
    return (f"response lengths (reference, one row at a time): min {lengths[0]}, median {statistics.median(lengths):g}, "
            f"max {lengths[-1]}; {full}/{len(rows)} rows without EOS")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="your clone of github.com/liuzhan22/Diffusion-ASR (required)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                        help="small: a CPU-sized network (see SHAPES); 8b: LLaDA-8B's shape with 352 audio "
                             "embeddings, for a GPU with ~40 GiB free")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="network dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="default: 1 8 32")
    parser.add_argument("--min-rows", type=int, default=8,
                        help="a batch-b measurement decodes max(b, --min-rows) rows in calls of b rows (default 8)")
    parser.add_argument("--gen-len", type=int, default=64, help="response block length (default 64; the paper: 128)")
    parser.add_argument("--settings", nargs="+", choices=[s.key for s in SETTINGS], default=[s.key for s in SETTINGS],
                        help="semi-ar: blocks of 32, one token per step; diffusion: one block, two tokens per step "
                             "(default: both)")
    parser.add_argument("--modes", nargs="+", choices=[m.cache for m in ENGINE_MODES],
                        default=[m.cache for m in ENGINE_MODES],
                        help="the engine's cache modes to run (default: all; none is the exact one)")
    parser.add_argument("--numerics", choices=["exact", "reference"], default="exact",
                        help="the engine's DecodeOptions.numerics (default exact; reference = the softmax in "
                             "the model's precision and topk's ties, as LLaDA's loop)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per system and batch size; median kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, prompt and audio")
    parser.add_argument("--logit-scale", type=float, default=4.0, help="std of the random network's logits")
    parser.add_argument("--eos-bias", type=float, default=8.0,
                        help="added to the EOS logit so that some responses end early (0: EOS is rare)")
    args = parser.parse_args(argv)
    if any(b < 1 or max(b, args.min_rows) % b for b in args.batch_sizes):
        parser.error(f"every batch size must be >= 1 and divide --min-rows ({args.min_rows}) or exceed it")
    if args.gen_len % 32:
        parser.error("--gen-len must be a multiple of 32 (the semi-AR block length)")
    return args


def describe(args: argparse.Namespace, shape: Shape, dtype: torch.dtype, device: torch.device) -> str:
    cfg = shape.config
    return "\n".join([
        f"# reference: {args.reference / REFERENCE_FILE}",
        f"# network: LLaDA-shaped, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, MLP "
        f"{cfg.hidden_size}, vocabulary {cfg.output_size}, {parameter_count(cfg) / 1e6:.1f} M parameters, {dtype}, "
        f"seed {args.seed}, logit scale {args.logit_scale}, EOS bias {args.eos_bias}",
        f"# sequence: prompt {shape.prompt_len} + audio {shape.audio_len} + response {args.gen_len}; "
        f"temperature 0, low_confidence remasking",
        f"# {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, torch {torch.__version__}, "
        f"{args.threads} threads; median of {args.repeats} interleaved repeats; "
        f"engine numerics {args.numerics}",
    ])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reference = load_reference_class(args.reference)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device here")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    rows = max(max(args.batch_sizes), args.min_rows)
    model = build_model(shape, device, dtype, args.seed, args.logit_scale, args.eos_bias, max(args.batch_sizes))
    audio = random_audio(model, shape, rows, args.seed)
    shim, lm = ReferenceShim(reference, model.eos_id), InputsEmbedsLM(model.decoder)
    settings = [s for s in SETTINGS if s.key in args.settings]
    modes = [m for m in ENGINE_MODES if m.cache in args.modes]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    print(describe(args, shape, dtype, device) + "\n", flush=True)
    started = time.perf_counter()
    for setting in settings:
        title = setting.title(args.gen_len)
        log(f"{title}:")
        systems = {"reference": lambda a, s=setting: run_reference(shim, lm, model, a, args.gen_len, s)}
        for mode in modes:
            systems[mode.name] = lambda a, s=setting, m=mode: run_engine(m, model, a, args.gen_len, s, args.numerics)
        _, baseline = timed_pass(systems["reference"], audio, 1)  # the reference's own output, row by row
        results = {b: measure(systems, audio[: max(b, args.min_rows)], b, args.repeats, log)
                   for b in sorted(args.batch_sizes)}
        print(f"## {title}\n\n{table(results, baseline, [m.name for m in modes])}\n\n{length_summary(baseline, args.gen_len)}\n",
              flush=True)
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"# total {time.perf_counter() - started:.0f} s{peak}")


if __name__ == "__main__":
    main()
