"""Transcription for users: options, the batched long-form pipeline, word times, output files."""
