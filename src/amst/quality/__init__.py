"""Alignment quality: ground-truth error, the paper's residual, plots and the report."""
