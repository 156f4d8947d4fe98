"""Datasets: manifests (JSONL, LibriSpeech, Kaldi), clips, and the batches training reads."""
