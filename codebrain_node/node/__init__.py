"""Drivers that run stages together: ``serve`` and ``worker`` (serve.py), offline ``impute`` (offline.py),
``demo`` (demo.py), ``status`` (status.py) and the end-to-end benchmark (bench_e2e.py)."""
