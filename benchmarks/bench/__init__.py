"""The pipeline benchmark's parts: load generator, processes, systems, rounds, report.

benchmarks/pipeline_benchmark.py wires them; client_benchmark.py, search_benchmark.py
and profile_worker.py borrow the load generator and the process helpers.
"""
