"""Simulated inputs and scoring the demo and the tests share: a synthetic speech corpus, WER and DER."""
