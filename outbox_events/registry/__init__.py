"""Payload schema registries."""
