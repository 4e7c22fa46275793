"""The networks: autoencoder (ECG <-> latents), base extractor (the patient's base vector),
AdaX DiT (the conditional denoiser), and their shared layers."""
