"""Pieces of `python -m src.train`: the training step and the run it works on (`step`), and the plug-ins that
join a run through the seams it offers (distillation from a teacher cache, `distill`)."""
