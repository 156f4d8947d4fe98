"""The networks: Whisper encoder, adapters, decoders, the speech models built from them, and their checkpoints."""
