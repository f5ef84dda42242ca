"""asyncpool's benchmark suite: asyncpool against its peers and no-pool baselines.

Run it with ``python -m benchmarks`` (or ``python benchmarks/run.py``); ``--help``
lists the filters. Results go to ``benchmarks/results/latest.{json,md,png}``.

Modules:

* ``systems``: the pools and baselines under test, behind one small interface.
* ``workloads``: what one borrower does per operation.
* ``runner``: one measurement cell (system x workload x concurrency x loop).
* ``machinery``: pure pool overhead per acquire+release, with a fake connection.
* ``hotpath``: cProfile / pyinstrument profiles of asyncpool's hot path.
* ``overload``: the overload scenario (``python -m benchmarks overload``): goodput under
  open-loop arrivals beyond capacity, with per-request deadlines.
* ``targets``: the issue's performance targets, evaluated from measured cells.
* ``report``: JSON, markdown and PNG output.
* ``cli``: the command line and the orchestration of a whole run.
"""
