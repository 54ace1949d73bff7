"""The benchmark harness: ``python -m bench.run`` (or ``bin/bench``). See ``bench/run.py``."""
