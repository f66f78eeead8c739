"""Encryption: options, the pipeline's stages, sealing, the self-check, files."""
