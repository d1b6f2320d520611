"""Training helpers: options, loops, checkpoints, run folder, CKA monitor, teacher groups."""
