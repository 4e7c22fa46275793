"""Samplers over one signature (``samplers``: DDPM, DDIM, DPM-Solver++ 2M, as in k-diffusion's
``sampling.py``) and their noise schedule."""
