"""Kafka I/O: the queued producer and delivery helpers (``producer``), topic creation and
checks (``topics``), and the embedded Tansu broker for demos and tests (``embedded``)."""
