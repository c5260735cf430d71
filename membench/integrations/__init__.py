"""membench inside the user's own training: the HF Trainer's settings as a membench recipe (`trainer_args`), and
a Trainer callback that profiles one real training step of the user's run (`hf`, imported on use)."""
