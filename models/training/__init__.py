"""Training: the shared trainer and training set (``trainer``), the stages that make a model
(``stages``: autoencoder, base extractor, DiT; ``python -m models.training.stages``), and the
few-step student's distillation (``distill``)."""
