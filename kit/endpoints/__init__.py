"""Talking to deployed endpoints: the client, sample tiles and wire records, the smoke test."""
