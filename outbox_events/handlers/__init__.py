"""Destinations: where the relay delivers events."""
