"""``make bench``: every performance scenario of issue 6, run side by side on this machine.

``python -m bench`` starts one broker, runs each scenario module (``bench.ceilings``,
``bench.submit``, ``bench.webhook``, ``bench.latency``, ``bench.budget``, ``bench.state``) and
writes ``bench-results/latest.{md,json}``. Each module exposes ``async def run(env) ->
list[Figure]``; every process it measures is a separate OS process, and CPU figures come from
``/proc``. Nothing here asserts: it prints figures and their ratios from the same run.
"""
