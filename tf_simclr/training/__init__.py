"""Training: the custom loop, the per-phase losses, evaluation, strategies and the phase runner."""
