"""Fake trainers and the harness that runs a real agent subprocess around them."""
