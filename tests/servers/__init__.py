"""Servers the integration tests start: SQS (moto) and Pub/Sub (emulator or fake)."""
