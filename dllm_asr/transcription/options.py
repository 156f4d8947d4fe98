"""How to decode: `TranscribeOptions` (one field per `dllm-asr transcribe` flag) and the names of
the strategies and deliberation maskings. Free of torch, so the command line can build its
parser (and answer `--help`) without loading it."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import Field, dataclass


STRATEGIES = ("diffusion", "semi-ar", "threshold", "prior", "ar")
MASKINGS = ("random", "low-confidence", "semi-ar")
REMASKINGS = ("low_confidence", "random")
NUMERICS = ("exact", "reference")
CACHES = ("none", "static", "prefix", "dual")
OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv")
"""The transcript file formats `dllm_asr.transcription.outputs` writes (`--output-format`)."""


@dataclass(frozen=True)
class TranscribeOptions:
    """How to turn audio into text. Every field maps to a command-line flag of `dllm-asr transcribe`."""

    strategy: str = "diffusion"
    """diffusion | semi-ar | threshold | prior (prior-guided, dLLM-ASR) | ar (autoregressive model)."""
    steps: int = 32
    """Denoising steps (diffusion, semi-ar); the pass limit for prior-guided decoding."""
    num_blocks: int = 4
    """Semi-AR sub-blocks (semi-ar strategy)."""
    threshold: float = 0.9
    """Confidence threshold tau (threshold strategy)."""
    length: int | None = None
    """Response block length L; None anchors it on each clip's duration (see `block_lengths`)."""
    tokens_per_second: float = 6.0
    """Upper bound of transcript tokens per second of speech, for the duration-anchored length."""
    temperature: float = 0.0
    """Gumbel sampling temperature for each predicted token (0: greedy argmax)."""
    remasking: str = "low_confidence"
    """Which masked tokens commit first: low_confidence (the most confident) or random."""
    seed: int | None = 0
    """Seed of the sampling noise and random remasking (None: a fresh seed each run)."""
    margin: int = 4
    """Prior-guided: masked positions appended after the prior so the model can extend it."""
    exit_threshold: float = 0.9
    """Prior-guided: confidence at which a token leaves the denoising loop."""
    prune: bool = True
    """Prior-guided: drop positions after a confidently predicted EOS."""
    num_beams: int = 1
    """AR strategy: beam width (1 = greedy)."""
    trace: bool = False
    """Keep the block after every step (for visualisation)."""
    numerics: str = "exact"
    """How confidences are compared: exact (probabilities from a float32 normaliser in float64,
    ties to the lower position: the same tokens in any model precision) or reference (softmax in
    the model's precision and torch.topk's tie order, as LLaDA's and Whisper-LLaDA's code)."""
    cache: str = "none"
    """Key/value cache across steps (approximate, faster): none | static (the prompt+audio keys/values
    once per batch) | prefix (Fast-dLLM: refreshed at each sub-block, everything before it cached) |
    dual (Fast-dLLM: also the positions after the sub-block cached)."""
    window_seconds: float | None = None
    """Longest audio decoded in one piece: longer clips are cut at pauses and their windows'
    transcripts joined. None: the model's own (its config's window_seconds), or Whisper's 30 s
    for `--strategy ar --ar-timestamps`, which reads on from a window's last time token as
    Whisper's `transcribe` does (docs/default-model.md, "Whisper's long-form decoding with
    timestamps")."""
    no_speech_threshold: float | None = 0.6
    """A clip whose no-speech probability is above this gets an empty transcript (Whisper's
    default 0.6); None never skips. Only models with the signal (the Whisper family) use it."""
    pad_to_seconds: float = 0.0
    """Clips shorter than this are encoded with silence appended up to it (zero log-mel frames,
    the padding Whisper's transcribe gives its 30-s window), so the decoder hears where the speech
    ends: fewer repeated words on clips of a word or two. 0: the clip's own frames only. AR
    decoding pads as `ar_pad_to_seconds` says."""
    ar_pad_to_seconds: float = 30.0
    """Whisper's pretrained decoder (--strategy ar, and prior's AR prior) reads each clip with
    zero log-mel frames appended up to this length: Whisper's own 30-s window by default. A
    shorter window costs S/30 of the encoder work; its encoder output is completed to Whisper's
    1500 frames with the encoder's output for a window of padding, and rows whose transcript fails
    Whisper's checks are decoded again from the 30-s window (held-out Asterisk prompts, bf16:
    about the 30-s window's WER at 10 s; docs/default-model.md, "A narrow window completed with
    silence")."""
    ar_timestamps: bool = False
    """Whisper's pretrained decoder decodes with its time tokens, under Whisper's timestamp rules
    (its `transcribe` default, and faster-whisper's), and they are dropped from the transcript:
    greedy decoding without them (the default, `<|notimestamps|>`) sometimes ends a window early
    or skips a sentence (docs/default-model.md, "Decoding with timestamps"). A transcript that
    stops short of its clip's end (a segment opened with nothing in it) is continued from its
    last time token (Whisper's seek); with `--strategy ar` long audio is cut into Whisper's 30-s
    windows unless `window_seconds` is given."""
    collapse_repeats: bool = False
    """Diffusion strategies (not ar): a token equal to the token before it is dropped, so a run of
    one token becomes one ("followed followed by" -> "followed by"); number tokens are kept
    ("5 5"). Parallel decoding repeats a word when it places the words one slot off (the
    repeated-token failure of non-autoregressive generation); docs/default-model.md, "Repeated words"."""
    word_timestamps: bool = False
    """Time each word (start, end, probability) from the pretrained Whisper decoder's alignment
    heads: one more decoder pass per segment (Whisper family only)."""
    initial_prompt: str | None = None
    """Text said before the audio (names, spellings, style), given to Whisper's pretrained decoder
    as previous-text context, as Whisper's --initial_prompt, here to every window: --strategy ar,
    and prior's AR prior. The diffusion decoder was not trained with such context."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.remasking not in REMASKINGS:
            raise ValueError(f"--remasking must be one of {', '.join(REMASKINGS)}, got {self.remasking!r}")
        if self.cache not in CACHES:
            raise ValueError(f"--cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.numerics not in NUMERICS:
            raise ValueError(f"--numerics must be one of {', '.join(NUMERICS)}, got {self.numerics!r}")
        for name in ("steps", "num_blocks", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.length is not None and self.length < 1:
            raise ValueError(f"--length must be >= 1, got {self.length}")
        for name in ("threshold", "exit_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ValueError(f"--window-seconds must be > 0, got {self.window_seconds}")
        if not 0 <= self.pad_to_seconds <= 30:
            raise ValueError(f"--pad-to-seconds must be in [0, 30], got {self.pad_to_seconds}")
        if not 0 < self.ar_pad_to_seconds <= 30:
            raise ValueError(f"--ar-pad-to-seconds must be in (0, 30], got {self.ar_pad_to_seconds}")
        if self.no_speech_threshold is not None and not 0 <= self.no_speech_threshold <= 1:
            raise ValueError(f"--no-speech-threshold must be in [0, 1], got {self.no_speech_threshold}")
        if self.initial_prompt and self.strategy not in ("ar", "prior"):
            raise ValueError("--initial-prompt: only --strategy ar and --strategy prior (its AR prior) use it; "
                             "the diffusion decoder was not trained with previous-text context")
        if self.ar_timestamps and self.strategy not in ("ar", "prior"):
            raise ValueError("--ar-timestamps: only --strategy ar and --strategy prior (its AR prior) use it")
        if self.temperature < 0 or self.margin < 0 or self.tokens_per_second <= 0:
            raise ValueError("--temperature and --margin must be >= 0 and --tokens-per-second > 0, got "
                             f"{self.temperature}, {self.margin}, {self.tokens_per_second}")


DELIBERATION_RULES = ("reference", "balanced")
"""How deliberation counts, splits and spends steps (`DeliberationOptions.rules`)."""


@dataclass(frozen=True)
class DeliberationOptions:
    """How to deliberate a prior transcript (Whisper-LLaDA sec. 3.3.1; docs/algorithms.md).

    `rules` picks between two sets of small decisions the paper leaves to its code:

    | decision | "reference" (default: Whisper-LLaDA's code) | "balanced" |
    |---|---|---|
    | tokens re-masked at ratio p of n | floor(p * n) | round half up |
    | semi-AR chunks of n tokens | n // C each, the remainder in the last | (c * n) // C cuts |
    | `steps` in semi-AR | the total, steps // C per chunk | per chunk |
    | an EOS filled into the middle | dropped, the tokens after it kept | the transcript ends there |
    """

    mask: str = "semi-ar"
    """Which prior tokens are re-masked: random | low-confidence | semi-ar (one chunk at a time)."""
    ratio: float = 0.3
    """Fraction p of the prior's tokens re-masked (random, low-confidence)."""
    chunks: int = 2
    """Semi-AR deliberation: number of chunks C, re-decoded left to right."""
    use_audio: bool = True
    """False conditions on the prompt alone (the paper's text-only control)."""
    rules: str = "reference"
    """reference: as Whisper-LLaDA's code, which made the paper's tables (floor(p * n) tokens
    re-masked; chunks of n // C tokens, the rest in the last; the steps shared by the chunks; an
    EOS filled mid-transcript dropped) | balanced (round half up; near-equal chunks; the steps
    per chunk; the transcript ends at an EOS)."""

    def __post_init__(self) -> None:
        if self.mask not in MASKINGS:
            raise ValueError(f"--mask must be one of {', '.join(MASKINGS)}, got {self.mask!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"--ratio must be in [0, 1], got {self.ratio}")
        if self.chunks < 1:
            raise ValueError(f"--chunks must be >= 1, got {self.chunks}")
        if self.rules not in DELIBERATION_RULES:
            raise ValueError(f"--deliberation-rules must be one of {', '.join(DELIBERATION_RULES)}, got {self.rules!r}")


def field_type(f: Field) -> type:
    """The type a TranscribeOptions field takes from a command line or a form (its annotation
    without `| None`)."""
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split("|")[0].strip()]


def field_help(cls: type) -> dict[str, str]:
    """{field name: the docstring under it} of a dataclass, read from its source (the help text of
    each command-line flag, written once beside the field), with "%" doubled as argparse wants."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split()).replace("%", "%%")  # argparse %-formats help
    return docs
