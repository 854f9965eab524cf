"""Network builder, checkpoints, losses, metrics, datasets, training loop and the Predictor."""

__all__: list[str] = []
