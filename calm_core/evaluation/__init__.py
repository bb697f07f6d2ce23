"""Evaluation: CALM against SAV on the same features (metrics), and figures (plots)."""
