"""Code that runs inside the worker process, by concern:

* :mod:`~spot_workflows.runtime.store`: the crash-safe checkpoint store (any fsspec filesystem);
* :mod:`~spot_workflows.runtime.checkpoint`: the Checkpointer, async snapshots, training hooks;
* :mod:`~spot_workflows.runtime.shards`: sharded ETL / batch inference;
* :mod:`~spot_workflows.runtime.worker`: ``spot-run`` and the termination notices it watches.
"""
