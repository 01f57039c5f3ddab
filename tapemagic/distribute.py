"""Several machines: `from tapemagic.distribute import multi_worker_strategy`.

The implementation lives in `tapemagic.training.distributed.cluster`.
"""

from tapemagic.training.distributed.cluster import ClusterError, Role, multi_worker_strategy

__all__ = ["ClusterError", "Role", "multi_worker_strategy"]
