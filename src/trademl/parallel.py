"""Independent jobs (walk-forward folds, tuning trials) on Ray, or in this process.

``workers == 1`` (the default, and what a 2-core machine wants for one job) runs every job
here, in order, without importing Ray. ``workers > 1`` starts a local Ray embedded in the
command, or joins the cluster at ``address`` (``--ray-address``, or ``RAY_ADDRESS``); Ray is an
optional extra (``pip install trademl[ray]``). Each job is given ``threads_per_worker`` threads
(the cores divided by the workers on a local Ray), so workers never oversubscribe the cores;
the jobs' own settings pass them on to LightGBM and torch (see ``with_threads``).

A job is a plain function of picklable arguments returning a picklable result: what it wrote
on disk must come back in the result (a remote node has its own disk), see ``pack_folder``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from trademl.errors import TradeMLError

RAY_MISSING = "pip install 'trademl[ray]' (or: pip install ray) to run with --workers > 1"


def threads_per_worker(workers: int, address: str | None = None) -> int:
    """Threads each job may use: this machine's cores shared by the workers (a cluster's nodes
    are not known here: one thread, the safe choice)."""
    if address:
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def with_threads(config, threads: int):
    """A copy of ``config`` whose trainers use at most ``threads`` threads each."""
    cfg = config.model_copy(deep=True)
    cfg.lgbm.num_threads = min(cfg.lgbm.num_threads or threads, threads)
    cfg.lstm.TORCH_THREADS = min(cfg.lstm.TORCH_THREADS, threads)
    cfg.ppo.torch_threads = min(cfg.ppo.torch_threads, threads)
    return cfg


@contextmanager
def ray_cluster(workers: int, address: str | None = None):
    """A Ray session for ``workers`` jobs at once: a local one with that many CPUs, or the
    cluster at ``address``; shut down afterwards when this call started it."""
    try:
        import ray
    except ImportError:
        raise TradeMLError("Ray is not installed", where="--workers", hint=RAY_MISSING) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network call from a trading machine
    if address:
        check_reachable(address)
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # a wrong address, a cluster that is down: say so, not a traceback
            raise TradeMLError(f"cannot start or join Ray: {e}", where=address or "local Ray",
                               hint="check --ray-address / RAY_ADDRESS, or run with --workers 1") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address that answers no TCP connection is an error now: Ray itself retries it for
    minutes before it gives up."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise TradeMLError(f"not a Ray address: {address!r}", where="--ray-address", hint="give HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise TradeMLError(f"cannot start or join Ray: nothing answers at {address} ({e.strerror or e})",
                           where="--ray-address", hint="start the cluster (`ray start --head`) or run with --workers 1") from None


def run_jobs(job: Callable, arguments: Sequence[tuple], *, workers: int = 1, address: str | None = None,
             shared: dict | None = None) -> list:
    """``job(*args, **shared)`` for every ``args`` of ``arguments``, results in the same order.
    ``shared``: keyword arguments every job gets (a dataset, sent to the cluster once)."""
    shared = shared or {}
    if workers <= 1:
        return [job(*args, **shared) for args in arguments]
    with ray_cluster(workers, address) as ray:
        refs = {name: ray.put(value) for name, value in shared.items()}
        remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        try:
            return ray.get([remote.remote(job, args, refs) for args in arguments])
        except ray.exceptions.RayTaskError as e:  # the job's own error, raised here as itself
            raise e.as_instanceof_cause() from None


def _call(job: Callable, args: tuple, shared: dict):
    import ray

    resolved = {name: (ray.get(value) if isinstance(value, ray.ObjectRef) else value) for name, value in shared.items()}
    return job(*args, **resolved)


def pack_folder(folder: Path) -> bytes:
    """A folder as tar bytes: how a job's files on a remote node come back."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def unpack_folder(data: bytes, folder: Path) -> Path:
    """What ``pack_folder`` packed, into ``folder`` (created); only plain files and folders."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")
    return folder
