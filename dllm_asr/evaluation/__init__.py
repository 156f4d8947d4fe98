"""Scoring: WER and its normaliser, evaluation runs, benchmarks and their reports."""
