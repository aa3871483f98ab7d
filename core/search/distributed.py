"""Multi-process work on torch.distributed: one rank per device, launched by torchrun.

`torchrun --nproc-per-node N -m headhunter.cli hunt ...` (or any script calling `headhunter.hunt`) sets
RANK/WORLD_SIZE/LOCAL_RANK; `context()` then joins the process group (NCCL when CUDA is available, else
gloo) and every rank runs the same deterministic driver: work units (fixed batches of rows) are dealt out
round-robin, results are all-gathered so every rank takes the same decisions, and rank 0 alone writes
files. Without those variables (or with WORLD_SIZE=1) it is a single process and nothing is initialised.

A rank that dies makes the collective calls of the others fail (gloo: connection closed; NCCL: watchdog
timeout, `timeout` seconds) and torchrun stops the job; the survivors raise `DistributedError` with a
message saying that the checkpoint holds every finished batch and how to resume (any number of processes).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from headhunter.errors import SearchError


class DistributedError(SearchError):
    """A rank of a multi-process run failed or vanished."""


@dataclass
class Context:
    """This process's place in the job: rank, world size, and collective helpers (no-ops for 1 process)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled by torch.distributed between our own processes only)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, obj)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses with backend-specific text
            raise DistributedError(
                f"rank {self.rank}/{self.world}: another rank stopped answering ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); every finished batch is in the "
                "checkpoint: rerun the same command (with any number of processes) to resume"
            ) from exc
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        return self.all_gather(obj if self.is_main else None)[0]


_CONTEXT: Context | None = None


def context(timeout_s: float = 600.0) -> Context:
    """The process's Context; joins the process group on first use when launched by torchrun."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = Context()
        return _CONTEXT
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size())
    return _CONTEXT


def local_device() -> str | None:
    """'cuda:LOCAL_RANK' for a multi-process run on GPUs, else None (leave the model where it is)."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None
