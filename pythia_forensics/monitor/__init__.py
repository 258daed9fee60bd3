"""Scoring while training: the live monitor (`live.Monitor`) scores, stores and analyses the
probe sets every N steps; `trainer.MonitorCallback` hooks it into transformers' Trainer."""
