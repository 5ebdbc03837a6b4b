"""Where chunk tasks run: this process, or the workers of a Dask cluster.

Two operations: :meth:`map` returns every chunk's (small, :math:`O(K)`) result in chunk order,
so the driver reduces them in a fixed order; :meth:`reduce` folds large per-chunk results
(:math:`K \times d` sums) as they arrive, so that at most a few of them exist at once, here or
on a worker. On Dask each chunk is pinned to one worker (``index mod n_workers``) so that the
worker keeps that chunk's Sinkhorn tile between passes; a chunk that lands elsewhere (its worker
died) is rebuilt there from the shards, which every worker reads from shared storage.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from .._errors import GPUAError
from .._optional import import_optional
from .._validation import in_range
from . import _kernels
from ._kernels import Part, merge_stats

__all__ = ["LocalExecutor", "DaskExecutor", "connect"]


class LocalExecutor:
    """Runs every chunk task in this process, in order."""

    n_processes = 1

    def owners(self, parts: Sequence[Part]) -> list[int]:
        return [0] * len(parts)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable, parts: Sequence[Part], *args, on_done: Callable[[], None] | None = None) -> list:
        out = []
        for p in parts:
            out.append(fn(p, *args))
            if on_done is not None:
                on_done()
        return out

    def reduce(self, fn: Callable, parts: Sequence[Part], *args, merge: Callable, on_done=None):
        acc = None
        for p in parts:
            r = fn(p, *args)
            acc = r if acc is None else merge([acc, r])  # fold now: one chunk's sums at a time
            if on_done is not None:
                on_done()
        return acc

    def map_stats(self, parts: Sequence[Part], *args, on_done=None) -> dict:
        return self.reduce(_kernels.part_stats, parts, *args, merge=merge_stats, on_done=on_done)

    def drop(self, token: str) -> None:
        _kernels.drop(token)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs chunk tasks on a ``distributed.Client``'s workers.

    Parameters
    ----------
    client : distributed.Client
    own_cluster : object, optional
        A cluster this executor started (closed with it).
    """

    def __init__(self, client, own_cluster=None):
        self.client = client
        self._cluster = own_cluster
        self.workers = sorted(client.scheduler_info()["workers"])
        if not self.workers:
            raise GPUAError("the Dask cluster has no workers; start some (dask worker ADDRESS) and retry.")
        self.n_processes = len(self.workers)
        try:
            client.run(_kernels.prepare_worker)  # each worker honours its budget like the driver
        except Exception:  # a worker that cannot run it still computes correctly
            pass

    def owners(self, parts: Sequence[Part]) -> list[int]:
        return [p.index % self.n_processes for p in parts]

    def broadcast(self, obj: Any) -> Any:
        # One copy per worker instead of one per task; hash=False skips hashing large tensors.
        return self.client.scatter(obj, broadcast=True, hash=False)

    def _submit(self, fn, parts, args):
        return [
            self.client.submit(fn, p, *args, workers=[self.workers[o]], allow_other_workers=True, pure=False)
            for p, o in zip(parts, self.owners(parts))
        ]

    @staticmethod
    def _wait(futures, on_done) -> None:
        if on_done is not None:
            for f in futures:  # in submission order: a progress count, not a completion order
                f.exception()  # blocks until done; an error is raised by gather below
                on_done()

    def map(self, fn: Callable, parts: Sequence[Part], *args, on_done=None) -> list:
        futures = self._submit(fn, parts, args)
        self._wait(futures, on_done)
        return self.client.gather(futures)

    #: Chunk results merged per task on a worker: bounds what waits there to be summed.
    fan_in = 4

    def reduce(self, fn: Callable, parts: Sequence[Part], *args, merge: Callable, on_done=None):
        # Per worker, a chain of merge tasks (high priority, so each runs as soon as its inputs
        # are ready) folds that worker's chunk results in groups of fan_in: a worker holds a few
        # K x d sums at a time, and only one per worker travels to the driver.
        owners = self.owners(parts)
        chains = []
        for w in range(self.n_processes):
            mine = [p for p, o in zip(parts, owners) if o == w]
            acc, links = None, []
            for i in range(0, len(mine), self.fan_in):
                group = self._submit(fn, mine[i : i + self.fan_in], args)
                acc = self.client.submit(
                    merge, ([acc] if acc is not None else []) + group, workers=[self.workers[w]],
                    allow_other_workers=True, pure=False, priority=1,
                )
                links.append((acc, len(group)))
            chains.append(links)
        heads = [links[-1][0] for links in chains if links]
        # Wait link by link, interleaving workers, and drop each finished link so that its
        # data can be released once the next link has consumed it.
        for j in range(max((len(c) for c in chains), default=0)):
            for links in chains:
                if j < len(links):
                    if on_done is not None:
                        links[j][0].exception()
                        for _ in range(links[j][1]):
                            on_done()
                    links[j] = None
        return merge(self.client.gather(heads))

    def map_stats(self, parts: Sequence[Part], *args, on_done=None) -> dict:
        return self.reduce(_kernels.part_stats, parts, *args, merge=merge_stats, on_done=on_done)

    def drop(self, token: str) -> None:
        try:
            self.client.run(_kernels.drop, token)
        except Exception:  # a worker gone away holds nothing to free
            pass

    def close(self) -> None:
        if self._cluster is not None:
            self.client.close()
            self._cluster.close()


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def connect(cluster, *, timeout: float = 10.0):
    """An executor for ``cluster``.

    Parameters
    ----------
    cluster : None, "local", int, str, distributed.Client or a cluster object
        ``None``: this process (no Dask). ``"local"`` or an int: a new ``LocalCluster`` of worker
        processes (that many; default one per core, one thread each). A string
        ``"tcp://host:8786"``: that scheduler. A ``Client`` or a cluster object: used as given.
    timeout : float
        Seconds to wait for a scheduler to answer before a :class:`GPUAError`.

    Returns
    -------
    LocalExecutor or DaskExecutor
    """
    if cluster is None:
        return LocalExecutor()
    if not in_range(timeout, low=0, low_open=True) or isinstance(timeout, bool):
        raise GPUAError(f"connect_timeout={timeout!r} must be a positive number of seconds (the wait for a Dask scheduler "
                        "to answer), e.g. 10.")
    distributed = import_optional("distributed", "cluster= (fitting on a Dask cluster; leave it None to fit here)")
    if isinstance(cluster, distributed.Client):
        return DaskExecutor(cluster)
    import numpy as np

    if isinstance(cluster, str) and cluster.strip().lower() == "local":  # "LOCAL" was taken for a host name
        cluster = "local"
    if cluster == "local" or (isinstance(cluster, (int, np.integer)) and not isinstance(cluster, (bool, np.bool_))):
        import os

        n = int(cluster) if not isinstance(cluster, str) else (os.cpu_count() or 1)
        if n < 1:
            raise GPUAError(f"cluster={cluster!r}: a local cluster needs at least one worker.")
        lc = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
        client = distributed.Client(lc, set_as_default=False)
        client.run(_set_threads, 1)  # one BLAS thread per single-threaded worker: no oversubscription
        return DaskExecutor(client, own_cluster=lc)
    if isinstance(cluster, str):
        _check_scheduler_address(cluster, distributed)
        try:
            client = distributed.Client(cluster, timeout=f"{float(timeout)}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise GPUAError(
                f"cluster {cluster!r} did not answer within {float(timeout):g} s ({exc}); check the scheduler address "
                "(tcp://HOST:8786) and that `dask scheduler` runs there, or fit without --cluster."
            ) from None
        try:
            client.wait_for_workers(1, timeout=float(timeout))
        except Exception:
            client.close()
            raise GPUAError(f"cluster {cluster!r} answered but has no workers after {float(timeout):g} s; start `dask worker {cluster}`.") from None
        return DaskExecutor(client, own_cluster=_ClientOnly(client))
    if hasattr(cluster, "scheduler_address"):
        return DaskExecutor(distributed.Client(cluster, set_as_default=False), own_cluster=_ClientOnly(None))
    raise GPUAError(f"cluster={cluster!r} is not understood; pass None, 'local', a worker count, 'tcp://host:port' or a distributed.Client.")


def _check_scheduler_address(address: str, distributed) -> None:
    """Refuse a scheduler address that names no port (``tcp://HOST`` without ``:8786``) or is empty
    before any connection: was "did not answer within 2 s (missing port number ...)", though
    nothing was tried, then a traceback from the half-built client at exit."""
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = distributed.comm.parse_address(address.strip())
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise GPUAError(f"cluster={address!r} is not a scheduler address ({exc}); give tcp://HOST:PORT (a `dask scheduler` "
                        "listens on port 8786), 'local' or a worker count.") from None


class _ClientOnly:
    """Closing a remote cluster's executor closes our client, never the cluster."""

    def __init__(self, client):
        self.client = client

    def close(self) -> None:
        pass
