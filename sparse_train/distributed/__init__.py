"""Training on several processes and hosts over MPI: row-sharded tables
(model parallel, exchanged by all-to-all) and replicated dense layers (data
parallel, gradients summed by Allreduce), with the same model as one process.

Launch (see docs/DISTRIBUTED.md)::

    pip install -e '.[mpi]'
    mpirun -n 2 python -m mpi4py scripts/train.py --distributed

In a script::

    from sparse_train.distributed import DistributedModel, local_batch, world
    comm = world()                                  # MPIComm under mpirun
    dist = DistributedModel(build_model("deepfm", spec, seed=0), comm)
    for batch in data.batches(shuffle=True, seed=epoch):   # the same on every rank
        loss = dist.train_step(local_batch(batch, comm), sparse_opt, dense_opt, step)

``import sparse_train`` does not import this package, nor mpi4py.
"""
from .checkpoint import DistributedCheckpointManager, restore_sharded, save_sharded
from .comm import Communicator, MPIComm, SingleProcessComm, launched_by_mpi, world
from .dynamic import ShardedDynamicTable, key_owner, reshard_table_states
from .exchange import LookupExchange, ShardedEmbeddingBag
from .faults import DistributedError, fail_fast
from .model import DistributedModel
from .run import run_distributed, train_distributed
from .sharding import ShardedTable, batch_slice, local_batch, owned_ids, shard_size

__all__ = ["Communicator", "SingleProcessComm", "MPIComm", "world", "launched_by_mpi",
           "DistributedModel", "LookupExchange", "ShardedEmbeddingBag", "ShardedTable",
           "local_batch", "batch_slice", "shard_size", "owned_ids", "fail_fast",
           "DistributedError", "DistributedCheckpointManager", "save_sharded",
           "restore_sharded", "train_distributed", "run_distributed",
           "ShardedDynamicTable", "key_owner", "reshard_table_states"]


