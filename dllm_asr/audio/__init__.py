"""Audio in: reading and decoding files, log-mel features, cutting long audio at pauses."""
