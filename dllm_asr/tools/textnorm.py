"""Text normalisation for synthetic speech transcripts.

Turns raw English prose into sentences that a text-to-speech engine reads exactly as they are
written: numbers become words ("1999" -> "nineteen ninety-nine"), a few abbreviations are
expanded ("Dr." -> "Doctor"), quotes and brackets are removed, and any sentence that still holds
something a TTS engine would read in an unpredictable way (digits, symbols, acronyms, leftover
abbreviations) is rejected. Natural case and punctuation are kept: the ASR model learns to write
them.
"""
from __future__ import annotations

import re

from num2words import num2words

__all__ = [
    "split_sentences",
    "verbalize_numbers",
    "expand_abbreviations",
    "normalize_sentence",
]

# Words that end in "." without ending a sentence; sentence splitting must not cut after them.
_NON_FINAL_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "vs", "etc", "e.g", "i.e", "no",
    "gen", "col", "capt", "lt", "rev", "hon", "sgt", "gov", "fig", "vol", "ch", "viz", "cf",
}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])")

_ABBREVIATIONS = [
    (re.compile(r"\bMr\.(?=\s)"), "Mister"),
    (re.compile(r"\bMrs\.(?=\s)"), "Missus"),
    (re.compile(r"\bDr\.(?=\s+[A-Z])"), "Doctor"),
    (re.compile(r"\bSt\.(?=\s+[A-Z])"), "Saint"),  # "St. Paul": before a name it is a saint ...
    (re.compile(r"(?<=[a-z] )St\.(?=[\s,;])"), "Street"),  # ... after one ("Main St.") a street
    (re.compile(r"(?<=[a-z] )St\.$"), "Street."),  # the same full stop also ends the sentence
    (re.compile(r"\bJr\.(?=[\s,;])"), "Junior"),
    (re.compile(r"\bJr\.$"), "Junior."),
    (re.compile(r"\bProf\.(?=\s+[A-Z])"), "Professor"),
    (re.compile(r"\bMt\.(?=\s+[A-Z])"), "Mount"),
    (re.compile(r"\bvs\.(?=\s)"), "versus"),
]

_ALLOWED = re.compile(r"^[A-Z][A-Za-z ,;:?!'.-]*[.?!]$")
_ANY_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Dr|St|Jr|Prof|Mt|vs)\.")
_INNER_SENTENCE_END = re.compile(r"[.?!]")  # "What will ye? shall I come": two sentences in one
_DIGIT = re.compile(r"\d")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")  # "UNIX", "VIII": engines spell or misread these
_LOOSE_HYPHEN = re.compile(r"(?<![A-Za-z])-|-(?![A-Za-z])|''")
_STRAY_LETTER = re.compile(r"(?<![\w'])(?![AIOaio]\b)[A-Za-z](?![\w'])")  # "x", "J" initials


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ., ! or ? followed by a capitalised word.

    Whitespace (including line breaks) is collapsed first. A full stop after a known
    abbreviation ("Mr.", "e.g.") or a single capital initial ("J. Smith") does not end a sentence.
    Returns stripped sentences in order; the last piece is kept even without final punctuation.
    """
    text = re.sub(r"\s+", " ", text).strip()
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if match.group(0).startswith(".") and _ends_with_abbreviation(text[start:match.start()]):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _ends_with_abbreviation(prefix: str) -> bool:
    """True when the word right before a full stop is an abbreviation or an initial."""
    words = prefix.split()
    if not words:
        return False
    last = words[-1].lstrip("\"'([")
    if len(last) == 1 and last.isupper():
        return True
    return last.lower() in _NON_FINAL_ABBREVIATIONS


def expand_abbreviations(text: str) -> str:
    """Write out Mr., Mrs., Dr., St. (Saint before a name, Street after one), Jr., Prof., Mt., vs."""
    for pattern, replacement in _ABBREVIATIONS:
        text = pattern.sub(replacement, text)
    return text


def _cardinal(number: int) -> str:
    # num2words writes "twelve thousand, three hundred": a comma inside a number is not prosody.
    return num2words(number).replace(",", "")


def _year(number: int) -> str:
    return num2words(number, to="year").replace(",", "")


def _plural(words: str) -> str:
    """'nineteen ninety' -> 'nineteen nineties' (for "1990s", "80s")."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _decimal(integer_part: str, fraction_part: str) -> str:
    digits = " ".join(_cardinal(int(d)) for d in fraction_part)
    return f"{_cardinal(int(integer_part))} point {digits}"


def _integer(digits: str) -> str:
    """Cardinal, or a year reading for 1100..2099; leading zeros ("007") are read digit by digit."""
    if len(digits) > 1 and digits.startswith("0"):
        return " ".join(_cardinal(int(d)) for d in digits)
    value = int(digits)
    if len(digits) == 4 and 1100 <= value <= 2099:
        return _year(value)
    return _cardinal(value)


def _clock(hours: str, minutes: str) -> str:
    h, m = int(hours), int(minutes)
    if m == 0:
        return f"{_cardinal(h)} o'clock"
    return f"{_cardinal(h)} oh {_cardinal(m)}" if m < 10 else f"{_cardinal(h)} {_cardinal(m)}"


def _dollars(amount: str, cents: str | None) -> str:
    value = int(amount.replace(",", ""))
    words = f"{_cardinal(value)} {'dollar' if value == 1 else 'dollars'}"
    if cents and int(cents):
        words += f" and {_cardinal(int(cents))} {'cent' if int(cents) == 1 else 'cents'}"
    return words


# Order matters: the more specific patterns run first so "$5.50" is not read as a decimal.
_NUMBER_RULES = [
    (re.compile(r"\$(\d[\d,]*)(?:\.(\d\d))?\b"), lambda m: _dollars(m.group(1), m.group(2))),
    (re.compile(r"\b(\d+(?:\.\d+)?) ?%"),
     lambda m: verbalize_numbers(m.group(1)) + " percent"),
    (re.compile(r"\b(\d{1,2}):(\d\d)\b"), lambda m: _clock(m.group(1), m.group(2))),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b"), lambda m: num2words(int(m.group(1)), to="ordinal")),
    (re.compile(r"\b(\d+)'?s\b"), lambda m: _plural(_integer(m.group(1)))),
    (re.compile(r"\b(\d+)\.(\d+)\b"), lambda m: _decimal(m.group(1), m.group(2))),
    (re.compile(r"\b\d{1,3}(?:,\d{3})+\b"), lambda m: _cardinal(int(m.group(0).replace(",", "")))),
    (re.compile(r"\b\d+\b"), lambda m: _integer(m.group(0))),
]


def verbalize_numbers(text: str) -> str:
    """Write numbers as spoken English words.

    Handles money ("$5.50" -> "five dollars and fifty cents"), percentages, clock times
    ("10:30" -> "ten thirty"), ordinals ("21st" -> "twenty-first"), decades ("1990s" ->
    "nineteen nineties"), decimals ("3.14" -> "three point one four"), grouped thousands
    ("12,000" -> "twelve thousand"), years 1100-2099 ("1999" -> "nineteen ninety-nine") and
    other integers (cardinals). Anything else is left untouched (and later rejected by
    `normalize_sentence` if digits remain).
    """
    for pattern, spoken in _NUMBER_RULES:
        text = pattern.sub(spoken, text)
    return text


_TYPOGRAPHIC = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'",
                              "\u2014": " -- ", "\u2013": "-", "`": '"'})
_BRACKETED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}")
_QUOTE_MARK = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])(?<!s')")  # a quote, not an apostrophe
# Anything outside this set (markup, symbols, other scripts) rejects a sentence before any work.
_REPAIRABLE = re.compile(r"[^A-Za-z0-9 ,;:?!'.\-\"()\[\]{}$%`\u2018\u2019\u201c\u201d\u2014\u2013\u2026]")
_NUMBER_WITH_DASH_OR_SLASH = re.compile(r"\d\s?[-/]|[-/]\s?\d")  # phones, ranges, fractions


def _strip_quotes_and_brackets(text: str) -> str:
    """Drop bracketed asides and editorial markup; remove quote marks but keep apostrophes."""
    text = text.translate(_TYPOGRAPHIC)
    for _ in range(2):  # nested brackets: "(as (here))"
        text = _BRACKETED.sub(" ", text)
    return _QUOTE_MARK.sub(" ", text.replace('"', " "))


_TIDY_RULES = [(re.compile(pattern), replacement) for pattern, replacement in [
    (r"\s*--+\s*", ", "),  # a dash is a pause: speak it as a comma
    (r"\.{2,}|\u2026", ","),  # an ellipsis inside a sentence is a pause too
    (r"\s+", " "),
    (r" ([,;:.?!])", r"\1"),
    (r"([,;:])(?: ?[,;:])+", r"\1"),  # ", ," left by removed asides
    (r"([!?])[!?.]+", r"\1"),
    (r"[,;:]+([.?!])$", r"\1"),
]]


def _tidy_punctuation(text: str) -> str:
    for pattern, replacement in _TIDY_RULES:
        text = pattern.sub(replacement, text)
    return text.strip().lstrip(",;: ").strip()


def normalize_sentence(sentence: str, min_words: int = 3, max_words: int = 25) -> str | None:
    """Return a TTS-safe transcript for one sentence, or None when it cannot be made safe.

    Applies quote/bracket removal, abbreviation expansion and number verbalisation, then accepts
    the result only if it starts with a capital letter, ends with . ? or !, holds only letters,
    spaces and , ; : ' - punctuation, no . ? ! before the end, no acronym or stray single letter,
    and has `min_words`..`max_words` words.
    """
    if (_REPAIRABLE.search(sentence) or _NUMBER_WITH_DASH_OR_SLASH.search(sentence)
            or sentence.count(" ") > 3 * max_words):  # cheap rejections first
        return None
    text = _strip_quotes_and_brackets(sentence)
    if _ANY_ABBREVIATION.search(text):
        text = expand_abbreviations(text)
    if _DIGIT.search(text):
        text = verbalize_numbers(text)
    text = _tidy_punctuation(text)
    if not _ALLOWED.match(text) or _INNER_SENTENCE_END.search(text[:-1]):
        return None
    if _ACRONYM.search(text) or _STRAY_LETTER.search(text):
        return None
    if _LOOSE_HYPHEN.search(text):  # hyphens only inside words
        return None
    words = text.split()
    if not min_words <= len(words) <= max_words:
        return None
    return text
