"""Run-time setup shared by the entry scripts: device context, CPU kernels, distributed ranks.

Rank and device numbers come from the launcher's environment (local_adapter); ModelArts sets the
same variables, so its adapter reads them through local_adapter too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from src.errors import UserError
from src.logger import logger
from src.model_utils import local_adapter

# oneDNN picks slow reference convolution kernels on some AVX-512 CPUs (measured ~45x slower for
# GoogleNet); capping the instruction set at AVX2 restores its JIT kernels.
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
ONEDNN_ISA_DEFAULT = "AVX2"

get_device_id = local_adapter.get_device_id
get_device_num = local_adapter.get_device_num
get_rank_id = local_adapter.get_rank_id
get_job_id = local_adapter.get_job_id


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank ``rank_id`` of ``rank_size``."""

    rank_id: int = 0
    rank_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and the logs meant for the user."""
        return self.rank_id == 0


_cap = {"set_here": False}


def cap_cpu_kernels() -> None:
    """Keep oneDNN on its fast kernels unless the user chose an ISA cap already."""
    if ONEDNN_ISA_VARIABLE in os.environ:
        logger.info("%s=%s (set by the user)", ONEDNN_ISA_VARIABLE, os.environ[ONEDNN_ISA_VARIABLE])
        return
    os.environ[ONEDNN_ISA_VARIABLE] = ONEDNN_ISA_DEFAULT
    _cap["set_here"] = True
    logger.info("%s=%s set for fast CPU convolutions (export %s=<isa> to choose another)",
                ONEDNN_ISA_VARIABLE, ONEDNN_ISA_DEFAULT, ONEDNN_ISA_VARIABLE)


def lift_cpu_kernel_cap() -> None:
    """The cap that ``cap_cpu_kernels`` set, taken back: for a network whose every convolution and
    pool runs on the CPU layer's own oneDNN primitives (channels-last), in layouts oneDNN chooses,
    so that they may use the whole instruction set (AVX-512 where the CPU has it). oneDNN reads the
    variable once, when it first needs it: call this before the network's first call. A cap the user
    set stays."""
    if _cap["set_here"] and os.environ.get(ONEDNN_ISA_VARIABLE) == ONEDNN_ISA_DEFAULT:
        del os.environ[ONEDNN_ISA_VARIABLE]
        _cap["set_here"] = False
        logger.info("%s lifted: every convolution and pool runs on the channels-last oneDNN kernels",
                    ONEDNN_ISA_VARIABLE)


# msrun starts the training script in two roles: once per worker, and once more as the scheduler,
# whose init() serves the cluster and then ends the process (it must never train on its own).
MSRUN_ROLES = ("MS_WORKER", "MS_SCHED")


# Set by the msrun launchers in scripts/: this machine's index in a multi-machine job.
NODE_RANK_VARIABLE = "GOOGLENET_NODE_RANK"


def is_redundant_scheduler() -> bool:
    """msrun starts a scheduler on every machine that has the master address, so a second node
    started on the master's host (NODE_RANK > 0) gets one too; node 0's is the job's."""
    node_rank = os.environ.get(NODE_RANK_VARIABLE, "0")
    return os.environ.get("MS_ROLE") == "MS_SCHED" and node_rank.isdigit() and int(node_rank) > 0


def launched_distributed() -> bool:
    """True when a launcher started this process as part of a job: msrun, a rank table or mpirun."""
    if os.environ.get("MS_ROLE") in MSRUN_ROLES:
        return True
    if os.environ.get("RANK_TABLE_FILE") and get_device_num() > 1:
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def _set_device(device_target: str) -> None:
    """Select the device; one this MindSpore installation cannot drive is a UserError."""
    import mindspore as ms

    try:
        if device_target == "CPU":
            ms.set_device("CPU")
        else:
            ms.set_device(device_target, get_device_id())
    except RuntimeError as err:
        if "Unsupported device target" not in str(err):
            raise
        supported = re.search(r"only supports one of the (\[[^\]]*\])", str(err))
        available = f" (it supports {supported.group(1)})" if supported else ""
        raise UserError(f"device_target={device_target} is not available in this MindSpore installation{available}; "
                        f"install MindSpore built for {device_target} with its drivers, or pass "
                        "--device_target=CPU") from None


def _join_cluster(init: Callable[[], None]) -> None:
    """Run the communication ``init``; a job whose processes did not all start is a UserError."""
    try:
        init()
    except RuntimeError as err:
        if "not successfully spawned" not in str(err):
            raise
        timeout = os.environ.get("MS_TOPO_TIMEOUT")
        within = f"within {timeout} s" if timeout else "within the cluster timeout"
        raise UserError(f"distributed job: not every process of the job joined {within} (workers "
                        f"expected: {os.environ.get('MS_WORKER_NUM', '?')}); a worker could not start or a node "
                        "never ran the launcher: check every worker's log and MASTER_ADDR/MASTER_PORT") from None


def configure_device(config, distributed: bool = False) -> Ranks:
    """Set the MindSpore context for ``config.device_target`` (graph mode).

    With ``distributed`` and a distributed launcher, initialise communication and data-parallel
    training with averaged gradients, and return this process's rank.
    """
    import mindspore as ms

    if config.device_target == "CPU":
        cap_cpu_kernels()
    _set_device(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    if not (distributed and launched_distributed()):
        return Ranks()

    if is_redundant_scheduler():
        logger.info("node %s: the job's scheduler runs on node 0; this one exits", os.environ[NODE_RANK_VARIABLE])
        raise SystemExit(0)
    from mindspore.communication import get_group_size, get_rank, init

    _join_cluster(init)
    ranks = Ranks(rank_id=get_rank(), rank_size=get_group_size())
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=ranks.rank_size)
    return ranks
