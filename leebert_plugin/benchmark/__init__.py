"""Every benchmark of the plugin, and the GPU check; ``scripts/`` holds their thin entry points.

Accuracy against speed-up (``scripts/benchmark.py``, BENCHMARKS.md):

- :mod:`.recipe`: one training recipe every method shares, from a budget;
- :mod:`.ablations`: LeeBERT's ablations as variants of a method;
- :mod:`.matrix`: the method x seed matrix, each run trained once and reused;
- :mod:`.evaluation`: every operating point of a run on dev and test;
- :mod:`.choice`: an operating point chosen on dev, read on test;
- :mod:`.stats`, :mod:`.report`, :mod:`.plots`: intervals, tables with verdicts, figures.

Cost (each measured side by side in one process, never against a stored figure):

- :mod:`.speed`: the batched early-exit forward against the plain full-depth one (``scripts/bench_speed.py``);
- :mod:`.clo_cost`: a LeeBERT/CLO update against a multi_exit update (``scripts/bench_clo.py``);
- :mod:`.serving`: ``EarlyExitClassifier.predict`` from raw text (``scripts/bench_serving.py``).

The GPU check (``scripts/gpu_check.py``): :mod:`.gpu_check`.
"""
