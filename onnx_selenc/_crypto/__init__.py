"""Sealing primitives: AES-GCM seal and tags, key chain and key files, bundle, digest."""
