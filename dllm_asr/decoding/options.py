"""Decoding options: one frozen dataclass shared by every strategy (docs/algorithms.md section 3)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral

REMASKING_CHOICES = ("low_confidence", "random")
NUMERICS_CHOICES = ("exact", "reference")


@dataclass(frozen=True)
class DecodeOptions:
    """How `decode` turns a (partly) masked response block into tokens.

    Every field is validated on construction; a bad value raises `ValueError` with a one-line
    message that names the option.
    """

    mask_id: int
    """Token id of [MASK]; positions holding it are undecided (LLaDA: 126336)."""

    eos_id: int
    """Token id of end-of-sequence; the response of a row ends before its first EOS (LLaDA: 126081)."""

    steps: int = 64
    """Diffusion: total denoising steps N over the whole block (docs/algorithms.md 3a). Semi-AR: split over the
    sub-blocks (3b). Prior-guided: the maximum number of passes (3f). Ignored by threshold decoding,
    whose step count adapts (3d)."""

    block_length: int | None = None
    """Semi-AR sub-block length in tokens (LLaDA's `block_length`); a row of length n gets
    ceil(n / block_length) sub-blocks, the last one possibly shorter. Exclusive with `num_blocks`."""

    num_blocks: int | None = None
    """Semi-AR number of sub-blocks M (docs/algorithms.md 3b); a row of length n is cut at (j * n) // M.
    Exclusive with `block_length`. Neither set: one block (plain diffusion decoding)."""

    temperature: float = 0.0
    """0 = greedy argmax. > 0: Gumbel noise (float64) on the logits picks the token; the confidence
    still comes from the un-noised softmax (docs/algorithms.md 3a)."""

    remasking: str = "low_confidence"
    """Which masked positions commit first: "low_confidence" (highest softmax confidence of the
    chosen token) or "random" (uniform scores)."""

    threshold: float | None = None
    """Fast-dLLM confidence threshold tau in (0, 1] (docs/algorithms.md 3d): per step commit every masked token
    with confidence >= tau and always the single most confident one. None = fixed step schedule."""

    numerics: str = "exact"
    """How confidences are computed and compared (docs/algorithms.md, "Numerics"). "exact": the
    chosen token's probability from a float32 normaliser, in float64, ties to the lower position
    (decisions do not depend on the model's precision). "reference": softmax in the logits' own
    dtype and `torch.topk`'s order among ties, as LLaDA's `generate` and Whisper-LLaDA's code."""

    eos_early_stop: bool = True
    """Per-row EOS early stop (docs/algorithms.md 3c): after a commit, every position after the row's first EOS
    becomes EOS; a row with nothing left to decode is finished and leaves the predictor's batch."""

    trace: bool = False
    """Record the full block (B, L) after every step in `DecodeResult.trace`."""

    seed: int | None = None
    """Seed of the torch.Generator behind Gumbel noise and random remasking (None: unseeded)."""

    prior_guided: bool = False
    """Prior-guided adaptive decoding (dLLM-ASR, docs/algorithms.md 3f): `init` holds prior token ids whose
    non-mask tokens are unverified guesses the model re-predicts, instead of committed tokens."""

    margin: int = 0
    """Prior-guided: masked positions appended after each row's prior, so the model can extend it."""

    exit_threshold: float = 0.9
    """Prior-guided: a position whose top confidence reaches this value takes its predicted token and
    is frozen (token-level early exit); in (0, 1]."""

    prune: bool = True
    """Prior-guided: once a position exits as EOS, drop every position after it (length-adaptive
    pruning), so later passes send shorter token tensors to the predictor. (Prior-guided decoding
    ignores `eos_early_stop`: pruning is its EOS rule.)"""

    def __post_init__(self) -> None:
        _check_options(self)

    @property
    def semi_autoregressive(self) -> bool:
        """True when the block is split into sub-blocks decoded left to right."""
        return self.block_length is not None or self.num_blocks is not None


def _fail(name: str, message: str) -> None:
    raise ValueError(f"DecodeOptions.{name}: {message}")


def _check_options(o: DecodeOptions) -> None:
    for f in fields(o):
        value = getattr(o, f.name)
        if f.name in ("mask_id", "eos_id", "steps", "margin") and (
            not isinstance(value, Integral) or isinstance(value, bool)
        ):
            _fail(f.name, f"must be an int, got {value!r}")
    if o.mask_id < 0 or o.eos_id < 0:
        _fail("mask_id" if o.mask_id < 0 else "eos_id", "must be a non-negative token id")
    if o.mask_id == o.eos_id:
        _fail("eos_id", f"must differ from mask_id ({o.mask_id})")
    if o.steps < 1:
        _fail("steps", f"must be >= 1, got {o.steps}")
    if o.block_length is not None and o.num_blocks is not None:
        _fail("block_length", "give block_length or num_blocks, not both")
    if o.block_length is not None and o.block_length < 1:
        _fail("block_length", f"must be >= 1, got {o.block_length}")
    if o.num_blocks is not None and not 1 <= o.num_blocks <= o.steps:
        _fail("num_blocks", f"must be between 1 and steps ({o.steps}), got {o.num_blocks}")
    if o.temperature < 0:
        _fail("temperature", f"must be >= 0, got {o.temperature}")
    if o.remasking not in REMASKING_CHOICES:
        _fail("remasking", f"must be one of {REMASKING_CHOICES}, got {o.remasking!r}")
    if o.numerics not in NUMERICS_CHOICES:
        _fail("numerics", f"must be one of {NUMERICS_CHOICES}, got {o.numerics!r}")
    if o.threshold is not None and not 0 < o.threshold <= 1:
        _fail("threshold", f"must be in (0, 1], got {o.threshold}")
    if o.threshold is not None and o.remasking != "low_confidence":
        _fail("threshold", "compares confidences, so it needs remasking='low_confidence'")
    if o.margin < 0:
        _fail("margin", f"must be >= 0, got {o.margin}")
    if not 0 < o.exit_threshold <= 1:
        _fail("exit_threshold", f"must be in (0, 1], got {o.exit_threshold}")
    if o.prior_guided:
        _check_prior_guided(o)


def _check_prior_guided(o: DecodeOptions) -> None:
    if o.semi_autoregressive:
        _fail("prior_guided", "does not use sub-blocks; leave block_length and num_blocks unset")
    if o.threshold is not None:
        _fail("threshold", "is for diffusion decoding; prior-guided decoding uses exit_threshold")
    if o.remasking != "low_confidence":
        _fail("remasking", "prior-guided decoding needs 'low_confidence'")
