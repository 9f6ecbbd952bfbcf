"""Evaluations: validation loss (HellaSwag and LAMBADA come with the evaluation issue)."""
