"""Stress testing: real noise at a known SNR (``noise``), detectors as plug-ins (``detectors``),
and beat-by-beat scoring the way ANSI/AAMI EC57 does (``scoring``)."""
