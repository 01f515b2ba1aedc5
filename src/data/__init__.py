"""What the stages read: competition folders (every layout), the prepared audio cache and its chunk and window
indexes, folds, pseudo-label and other tables, the teacher cache, and the training datasets, samplers and
augmentations built on them."""
