"""Tests for dllm_asr.tools.textnorm: hand-worked cases of the corpus builder's text cleaning."""
from __future__ import annotations

import pytest

from dllm_asr.tools.textnorm import (expand_abbreviations, normalize_sentence, split_sentences,
                                     verbalize_numbers)


@pytest.mark.parametrize("raw, spoken", [
    ("He had 3 dogs in 1999.", "He had three dogs in nineteen ninety-nine."),
    ("It was the 1st and the 22nd.", "It was the first and the twenty-second."),
    ("Pi is 3.14 here.", "Pi is three point one four here."),
    ("They sold 12,345 cars.", "They sold twelve thousand three hundred and forty-five cars."),
    ("It cost $5.50 today.", "It cost five dollars and fifty cents today."),
    ("We met at 10:30 and 7:05.", "We met at ten thirty and seven oh five."),
    ("In the 1990s it rose 50%.", "In the nineteen nineties it rose fifty percent."),
    ("Born in 2005, agent 007.", "Born in two thousand and five, agent zero zero seven."),
    ("Only 101 left.", "Only one hundred and one left."),
])
def test_verbalize_numbers(raw: str, spoken: str) -> None:
    assert verbalize_numbers(raw) == spoken


def test_expand_abbreviations_saint_versus_street() -> None:
    assert expand_abbreviations("Mr. Smith met Dr. Jones on Main St. near St. Paul.") == \
        "Mister Smith met Doctor Jones on Main Street near Saint Paul."


def test_split_sentences_respects_abbreviations_and_initials() -> None:
    text = "Mr. Smith came home.  He saw J. R. Tolkien!\nWas it late? Yes, it was 3 a.m. then"
    assert split_sentences(text) == [
        "Mr. Smith came home.", "He saw J. R. Tolkien!", "Was it late?", "Yes, it was 3 a.m. then"]


def test_split_sentences_keeps_closing_quote_with_its_sentence() -> None:
    assert split_sentences('He said "go." Then he left.') == ['He said "go."', "Then he left."]


@pytest.mark.parametrize("raw, clean", [
    ("He had 3 dogs in 1999.", "He had three dogs in nineteen ninety-nine."),
    ('"Hello," she said -- \'it is late\'.', "Hello, she said, it is late."),
    ("Pi is 3.14 (roughly) they say.", "Pi is three point one four they say."),
    ("The dogs' bowls were empty.", "The dogs' bowls were empty."),
    ("Wait... what did you say?!", "Wait, what did you say?"),
    ("I live on Main St.", "I live on Main Street."),
    ("Mr. Brown met Dr. Who.", "Mister Brown met Doctor Who."),
])
def test_normalize_sentence_cleans(raw: str, clean: str) -> None:
    assert normalize_sentence(raw) == clean


@pytest.mark.parametrize("raw", [
    "UNIX is a fine system.",          # acronym: spelled or misread by the engines
    "See e.g. this one here.",         # leftover abbreviation
    "Henry VIII had six wives.",       # roman numeral
    "Call 555-1234 now please.",       # phone number: no single reading
    "Read pages 10-20 tonight.",       # range
    "Email me at a@b.com today.",      # symbols
    "Too short.",                      # under 3 words
    "word " * 30 + "end.",             # over 25 words
    "no capital at the start.",        # a fragment of a broken line
    "It has no final punctuation",
    "He saw x and y there.",           # stray letters
    "What will ye? shall I come unto you?",  # two sentences, oddly joined
])
def test_normalize_sentence_rejects_what_tts_cannot_say(raw: str) -> None:
    assert normalize_sentence(raw) is None
