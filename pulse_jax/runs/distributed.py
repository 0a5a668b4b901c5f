"""Many hosts: joining JAX's distributed runtime, sharing work, gathering summaries.

JAX's own runtime is the engine. `initialize` joins it when the process runs
in a cluster JAX recognises (Cloud TPU pods, Slurm, Open MPI, Kubernetes
JobSets: `jax.distributed.initialize()` reads them from the environment) or
when told where the coordinator is; on a single host it does nothing. After it,
`jax.devices()` lists every chip of every host and `jax.local_devices()` this
host's own.

A sweep's results are independent of one another, so hosts share the work
without talking: `process_share` hands each process a fixed slice of the work
list and each runs `solve` on its local devices. The only collective is the
final `gather` of a few numbers per host. `cpu_model` names the host's CPU for manifests,
reports and benchmarks.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins JAX's distributed runtime if there is one to join; a no-op on one host.

    Must run before anything else touches JAX (before `jax.devices()`). With no arguments
    the cluster is detected from the environment as `jax.distributed.initialize()` does
    (on a Cloud TPU pod every worker finds the others by itself; `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` also work); when no cluster is found the
    process runs alone. With arguments they are passed on, e.g. two processes on one
    machine: `initialize("127.0.0.1:12345", 2, i)` (CPU devices talk through gloo).

    Args:
      coordinator_address: "host:port" of process 0's coordinator service.
      num_processes: how many processes share the run.
      process_id: this process, 0..num_processes-1.

    Returns:
      Whether the process is part of a multi-process run.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
    from_env = any(
        os.environ.get(name)
        for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    )
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if num_processes == 1 and not coordinator_address:
        return False
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError:
        # No cluster in the environment and nothing given: a single-host run. Anything
        # the user asked for explicitly must not fail silently.
        if explicit or from_env:
            raise
        return False
    return jax.process_count() > 1


def process_share(items: Sequence[T], index: int | None = None, count: int | None = None):
    """This process's share of a work list: items index, index + count, index + 2 count...

    The split depends only on the list and the process count, never on what is already
    done, so every process computes the same partition without talking to the others and
    each item has exactly one owner. Striding (rather than contiguous blocks) spreads
    every input and seed over all hosts.

    Args:
      items: the whole work list, in the same order on every process.
      index, count: default `jax.process_index()` and `jax.process_count()`.

    Returns:
      The items this process owns, in list order.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    return list(items[index::count])


def gather(values: Sequence[float]) -> np.ndarray:
    """Every process's `values` (the same length everywhere), on every process.

    A collective: every process must call it, at the same point of the run.

    Returns:
      float64 [processes, len(values)], row p from process p.
    """
    row = np.asarray(values, np.float64)
    if jax.process_count() == 1:
        return row[None]
    # float32 on the wire (x64 is off): split each value into a coarse and a fine part
    # so that counts and seconds come back exactly enough.
    coarse = row.astype(np.float32)
    fine = (row - coarse.astype(np.float64)).astype(np.float32)
    both = multihost_utils.process_allgather(np.stack([coarse, fine]))  # [P, 2, V]
    return both[:, 0].astype(np.float64) + both[:, 1].astype(np.float64)


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s), or the architecture where the OS does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
