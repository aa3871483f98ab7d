"""Multi-process work on torch.distributed: one rank per device, launched by torchrun.

`torchrun --nproc-per-node N -m headhunter.cli hunt ...` (or any script calling `headhunter.hunt`) sets
RANK/WORLD_SIZE/LOCAL_RANK; `context()` then joins the process group (NCCL when CUDA is available, else
gloo) and every rank runs the same deterministic driver: work units (fixed batches of rows) are dealt out
round-robin, results are all-gathered so every rank takes the same decisions, and rank 0 alone writes
files. Without those variables (or with WORLD_SIZE=1) it is a single process and nothing is initialised.

A rank that dies makes the collective calls of the others fail (gloo: connection closed; NCCL: watchdog
timeout, `timeout` seconds) and torchrun stops the job; the survivors raise `DistributedError` with a
message saying that the checkpoint holds every finished batch and how to resume (any number of processes).
torchrun stops a survivor with SIGTERM half a second after it sees a worker die: the handler installed here
prints the same message (one `Error:` line) and exits at once, instead of dying silently.

Elastic restarts (`torchrun --max-restarts N`): torchrun starts a new group after a worker dies, on the same
rendezvous store (`MASTER_ADDR:MASTER_PORT`, the agent's TCPStore). Each attempt joins the process group
under a key prefix its ranks agree on through the store (`_attempt_prefix`: fresh random names, never the
restart count, which is per node), so the new ranks never read the dead attempt's addresses (which made gloo's
connectFullMesh fail with "Connection refused"); the group is destroyed when the process exits. The restarted script runs from the top and resumes from the checkpoint by
itself (rank 0 reads it and broadcasts it), so the run ends as an uninterrupted one would.
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import threading
import time
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
                f"{str(exc).splitlines()[0][:200] if str(exc) else 'no message'}); {what_next()}"
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
        timeout = datetime.timedelta(seconds=timeout_s)
        # the rendezvous store of this launch (env://: MASTER_ADDR/PORT, RANK, WORLD_SIZE), under a prefix of
        # this attempt: an elastic restart reuses the store, and must not read the dead attempt's keys
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        prefix = _attempt_prefix(store, rank, size, timeout_s)
        dist.init_process_group(backend=backend, store=dist.PrefixStore(prefix, store), rank=rank, world_size=size,
                                timeout=timeout)
        atexit.register(_leave_group)
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            _stop_cleanly_on_sigterm(rank, size)
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size())
    return _CONTEXT


def _attempt_prefix(store: Any, rank: int, world: int, timeout_s: float) -> str:
    """A store key prefix that every rank of this attempt, and no earlier attempt, uses.

    torchrun's elastic restart hands the new group the same store, still holding the dead attempt's keys (its
    ranks' addresses), and the restart count is per node (a node that lost no worker restarts with its count
    unchanged), so neither can name the attempt. Instead the ranks agree on a fresh name through the store
    with keys no earlier attempt can have written: rank r > 0 posts a random nonce under `hello/<r>` and waits
    for `welcome/<nonce>`; rank 0 answers every nonce it finds with its own random prefix, and starts once every
    rank has confirmed under that prefix. A stale nonce may be answered too, harmlessly: nobody waits for it.
    """
    import uuid

    base = "headhunter/join/"
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        prefix = f"headhunter/{uuid.uuid4().hex}/"
        waiting, answered = set(range(1, world)), set()
        while waiting:
            for other in sorted(waiting):
                if store.check([f"{prefix}confirm/{other}"]):
                    waiting.discard(other)
                elif store.check([f"{base}hello/{other}"]):
                    nonce = store.get(f"{base}hello/{other}").decode()
                    if nonce not in answered:
                        store.set(f"{base}welcome/{nonce}", prefix)
                        answered.add(nonce)
            if waiting:
                if time.monotonic() > deadline:
                    raise DistributedError(f"rank 0/{world}: ranks {sorted(waiting)} did not join within {timeout_s:g} s")
                time.sleep(0.01)
        return prefix
    nonce = uuid.uuid4().hex
    store.set(f"{base}hello/{rank}", nonce)
    while not store.check([f"{base}welcome/{nonce}"]):
        if time.monotonic() > deadline:
            raise DistributedError(f"rank {rank}/{world}: rank 0 did not answer within {timeout_s:g} s")
        time.sleep(0.01)
    prefix = store.get(f"{base}welcome/{nonce}").decode()
    store.set(f"{prefix}confirm/{rank}", "1")
    return prefix


def what_next() -> str:
    """What happens to a multi-process run after a rank failed: torchrun's elastic restart resumes it (while
    restarts are left, `--max-restarts`), else the user reruns the command; either way from the checkpoint."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    most = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restart < most:
        return (f"every finished batch is in the checkpoint: torchrun restarts the group (restart {restart + 1} of "
                f"{most}), which resumes from it")
    return "every finished batch is in the checkpoint: rerun the same command (with any number of processes) to resume"


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - at exit, a group whose peers are gone may fail to shut down cleanly
            pass


def _stop_cleanly_on_sigterm(rank: int, world: int) -> None:
    """torchrun SIGTERMs the surviving workers 0.5 s after one dies: say why and what happens next in one
    `Error:` line, then exit at once (exit status 143, as a SIGTERM'd process)."""

    def stop(signum: int, frame: Any) -> None:
        message = (f"Error: rank {rank}/{world}: stopped by torchrun (another rank failed or the job was "
                   f"stopped); {what_next()}\n")
        try:
            os.write(2, message.encode())
        finally:
            os._exit(128 + signal.SIGTERM)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def local_device() -> str | None:
    """'cuda:LOCAL_RANK' for a multi-process run on GPUs, else None (leave the model where it is)."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None
