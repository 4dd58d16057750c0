"""Serving a watched video: frames to a state (frames.py), answers from a state (decoding.py), sessions."""
