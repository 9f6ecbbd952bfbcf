"""Evaluations: validation loss, HellaSwag, LAMBADA, and a run's evaluation history."""
