"""Running build, eval, sensitivity and sweep tasks on a Ray cluster (``--cluster ray://HOST:PORT``).

A local run is unchanged; with a cluster each variant (each evaluation, sensitivity group,
sweep) is one Ray task that asks for the memory and CPUs its plan needs (``resources``), runs
the same library code on its node (``tasks``), and hands its outputs back through a shared
folder or by a sha256-checked pull (``transfer``). ``session`` is the only module that talks to
Ray on the driver; Ray itself is the optional extra ``quantforge[ray]``.
"""

from quantforge.cluster.config import ClusterSpec, resolve_cluster
from quantforge.cluster.resources import NodeInfo, TaskResources

__all__ = ["ClusterSpec", "NodeInfo", "TaskResources", "resolve_cluster"]
