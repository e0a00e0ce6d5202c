"""Past one machine (issue 28): does the pipeline's memory stay flat as the data grows, and does it run on a
Ray cluster that loses a node?

1. Memory: a generated ImageNet-like folder (``train/<synset>/*.JPEG``, 256x256 smooth random JPEGs, seeded) of
   2,000 and of 20,000 images goes through prepare_data -> pretrain_dictionary -> train_vqvae -> extract_codes ->
   train_prior -> evaluate at tiny settings (``SMALL``: 64x64 images, a few steps), one ``python -m tasks.<stage>``
   at a time in a temporary workspace (``flows.workspace.make_workspace``: git, DVC, params). Each stage's peak
   RSS is the largest sum, over the stage process and everything it started (DataLoader and decoding workers,
   the Ray instance it starts - GCS, raylet, Ray's agents and workers), of the resident set sizes sampled every
   0.2 s; and its seconds. Target: a stage's peak grows by at most 20% from 2,000 to 20,000 images. (Resident
   sets count shared pages once per process that maps them: Ray's object store pages count in each process that
   reads them. That is the measure the issue names; the peak's processes are recorded beside it.)
2. Two nodes: the same pipeline (20,000 images) on a Ray cluster of two nodes of one CPU each, two ``ray start``
   on loopback addresses (``LOOPBACK``) with their own --temp-dir, the second joining the first (token
   authentication, a token of this run's own), joined by the stages through ``SPARSE_VQVAE_RAY_ADDRESS``. The
   second node is killed (SIGKILL to every process of its ``ray start``) while extract_codes runs (its actors:
   ``ray.num_workers``, one a node) and again while train_prior runs (2 workers, one a node; after its first
   checkpoint), and started again ten seconds later. The run must finish, and give the code stores of the
   one-node run (records compared by hash).
3. Throughput: extraction images/s (the stage's own figure) and prior training steps/s (from the times its
   checkpoints are written: ``prior.checkpoint_every`` steps apart) with 1 and 2 workers of one CPU on the
   two-node cluster (``ray.num_workers`` and ``prior.num_workers``; the pipeline's prior has one worker).

Every Ray process this script starts is in the session of a process it started, and is stopped by id at the
end (never ``ray stop``, which stops every Ray of the user).

    python benchmarks/scale.py          # ~40 min on 2 shared cores; the images stay in benchmarks/.cache/scale/
    python benchmarks/scale.py --sizes 200 2000 --two-node-size 2000 --output /tmp/scale.json   # a quicker look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.workspace import make_workspace  # noqa: E402
from tasks.sessions import kill_session, session_members  # noqa: E402

from _results import RESULTS, write_json  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache" / "scale"
SIZES = (2000, 20000)
STAGES = ("prepare_data", "pretrain_dictionary", "train_vqvae", "extract_codes", "train_prior", "evaluate")
GROWTH_TARGET = 0.20  # the issue's: peak RSS may grow by at most 20% from 2,000 to 20,000 images
SYNSETS = 100  # class folders of the generated set
PYTHON = sys.executable
RAY = str(Path(PYTHON).parent / "ray")
INTERVAL = 0.2  # seconds between samples of a stage's processes

# Tiny settings: minutes a size, where the data's size alone varies. The evaluation's image counts are small.
SMALL = {
    # 64x64: the 20,000 images' array (245 MB) stands out of a Ray stage's few GB, where 32x32's (61 MB) would not.
    # 15% held out: 300 test images at 2,000, more than one batch (the evaluations' 256), as at 20,000.
    "data": {"name": "imagenet", "image_size": 64, "test_fraction": 0.15, "seed": 0},
    "model": {"channels": 32, "res_blocks": 1, "res_channels": 16, "embed_dim": 16, "num_atoms": 64,
              "coef_levels": 8},
    "pretrain": {"steps": 5, "batch_size": 32, "latents": 2048, "iterations": 3},
    "train": {"steps": 10, "batch_size": 32, "eval_every": 10, "checkpoint_every": 5},
    "ray": {"num_workers": 2},
    "extract": {"batch_size": 64},
    "prior": {"steps": 60, "batch_size": 32, "channels": 16, "blocks": 1, "res_per_block": 1,
              "checkpoint_every": 10},
    "evaluate": {"batch_size": 64, "grid_images": 8, "samples": 4, "rate_distortion_images": 16,
                 "prior_coding_images": 2, "synthesis_images": 16},
    "mlflow": {"log_every": 5},
}


# ------------------------------------------------------------------------------------------------ the images

def _write_images(task: tuple[Path, int, int, int]) -> int:
    """Images ``first`` .. ``last - 1`` of the set: each a 6x6 grid of random colours from (seed, index),
    bicubically enlarged to 256x256 (smooth, so JPEG-typical sizes), at quality 90."""
    from PIL import Image

    root, first, last, seed = task
    for index in range(first, last):
        rng = np.random.default_rng([seed, index])
        small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        synset = f"n{index % SYNSETS:08d}"
        small.resize((256, 256), Image.BICUBIC).save(root / "train" / synset / f"{synset}_{index}.JPEG", quality=90)
    return last - first


def make_images(count: int, workers: int = 2, seed: int = 0) -> Path:
    """``CACHE/imagenet-<count>``: made once (in a scratch folder renamed when whole), then reused."""
    root = CACHE / f"imagenet-{count}"
    if (root / "done.json").is_file():
        return root
    scratch = root.with_name(root.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    for synset in range(SYNSETS):
        (scratch / "train" / f"n{synset:08d}").mkdir(parents=True)
    start = time.perf_counter()
    chunk = 250
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_images, [(scratch, first, min(first + chunk, count), seed)
                                      for first in range(0, count, chunk)]))
    (scratch / "done.json").write_text(json.dumps({"images": count, "seed": seed, "size": 256, "quality": 90}))
    shutil.rmtree(root, ignore_errors=True)
    scratch.rename(root)
    print(f"made {count:,} images in {root} ({time.perf_counter() - start:.0f} s)", flush=True)
    return root


# ------------------------------------------------------------------------------------- a stage's processes

def _label(process: psutil.Process) -> str:
    """A process's kind for the breakdown: Ray's title (ray::IDLE, raylet, gcs_server), or the module or script
    a Python process runs."""
    words = process.cmdline() or [process.name()]
    first = words[0].split(" ")[0]
    if Path(first).name.startswith("python"):
        rest = [w for w in words[1:] if w not in ("-u", "-B", "-E", "-s", "-I")]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1]
        return Path(rest[0]).name[:48] if rest else "python"
    return Path(first).name[:48]


# What a resident set holds (/proc/<pid>/status): private memory; pages of mapped files (the memory-mapped .npy,
# the libraries: page cache the kernel can take back); shared memory (Ray's object store in /dev/shm).
RSS_KINDS = {"anonymous": "RssAnon", "file": "RssFile", "shared": "RssShmem"}


class Sampler(threading.Thread):
    """Samples ``leader``'s processes every ``INTERVAL`` seconds until ``stop``: the peak of their summed RSS and
    which processes made it; and the modification times of the files ``watch`` globs match (checkpoints)."""

    def __init__(self, leader: int, watch: Callable[[], list[Path]] | None = None) -> None:
        super().__init__(daemon=True)
        self.leader, self.watch = leader, watch
        self.peak, self.breakdown, self.kinds, self.samples = 0, {}, dict.fromkeys(RSS_KINDS, 0), 0
        self.writes: dict[str, list[int]] = {}  # file -> its distinct mtimes (ns), in order
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(INTERVAL)
        self.sample()

    def sample(self) -> None:
        total, parts, kinds = 0, {}, dict.fromkeys(RSS_KINDS, 0)
        for process in session_members(self.leader):
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                label = _label(process)
            except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied,
                    psutil.ZombieProcess):
                continue
            found = {key: int(value) * 1024 for key, value in re.findall(r"^(\w+):\s+(\d+) kB", status, re.M)}
            rss = found.get("VmRSS", 0)
            total += rss
            parts[label] = parts.get(label, 0) + rss
            for kind, key in RSS_KINDS.items():
                kinds[kind] += found.get(key, 0)
        self.samples += 1
        if total > self.peak:
            self.peak, self.breakdown, self.kinds = total, parts, kinds
        for path in self.watch() if self.watch else []:
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            seen = self.writes.setdefault(str(path), [])
            if not seen or seen[-1] != mtime:
                seen.append(mtime)

    def stop(self) -> None:
        self.done.set()
        self.join()


def environment(**extra: str) -> dict[str, str]:
    """A user's shell after `make`: this interpreter's folder first on PATH; no inherited MLflow run or Ray
    address; prepare_data decodes with 2 processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "SPARSE_VQVAE_"))}
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["SPARSE_VQVAE_DATA_WORKERS"] = "2"
    env.update(extra)
    return env


def run_stage(root: Path, stage: str, env: dict[str, str], watch: Callable[[], list[Path]] | None = None,
              during: Callable[[subprocess.Popen], None] | None = None) -> dict[str, Any]:
    """``python -m tasks.<stage>`` in ``root``, sampled; ``during(process)`` runs beside it in a
    thread (the node kills). Returns seconds, peak RSS (MB), the peak's processes, the stage's timings and its
    output."""
    log = root / "logs" / f"{stage}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n===== {time.strftime('%H:%M:%S')} {stage}\n")
        out.flush()
        start = time.perf_counter()
        process = subprocess.Popen([PYTHON, "-m", f"tasks.{stage}"], cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(process.pid, watch)
        sampler.start()
        helper = threading.Thread(target=during, args=(process,), daemon=True) if during else None
        if helper:
            helper.start()
        try:
            returncode = process.wait()
            seconds = time.perf_counter() - start
        finally:
            sampler.stop()
            left = kill_session(process.pid)  # anything the stage left running (none, when it ends well)
            if helper:
                helper.join()
    output = log.read_text()
    output = output[output.rindex(f"===== "):]
    timings_file = root / "metrics" / "timings" / f"{stage}.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() and returncode == 0 else {}
    print(f"  {stage}: {'ok' if returncode == 0 else f'FAILED ({returncode})'} {seconds:.1f} s, "
          f"peak {sampler.peak / 2**20:,.0f} MB over {sampler.samples} samples", flush=True)
    return {"returncode": returncode, "seconds": seconds, "peak_rss_mb": sampler.peak / 2**20,
            "peak_processes_mb": [[k, round(v / 2**20, 1)] for k, v in sorted(sampler.breakdown.items(),
                                                                              key=lambda kv: -kv[1])],
            "peak_rss_kinds_mb": {k: round(v / 2**20, 1) for k, v in sampler.kinds.items()},
            "timings": timings, "writes": sampler.writes, "output": output, "left_running": left}


# ------------------------------------------------------------------------------------------- the pipeline

def workspace(folder: Path, images: Path, overrides: dict | None = None) -> Path:
    """A pipeline workspace (git, DVC, the code, params.yaml = the repository's + ``SMALL`` + ``overrides``)
    reading ``images``."""
    params = json.loads(json.dumps(SMALL))
    params["data"]["root"] = str(images)
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    return make_workspace(folder, params, git=True)


def set_params(root: Path, **sections: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def prior_checkpoints(storage: Path) -> Callable[[], list[Path]]:
    """The files the prior stage rewrites at every checkpoint (``<storage>/prior/<run key>/<map>.pt``)."""
    return lambda: sorted(storage.glob("prior/*/*.pt"))


def pipeline(root: Path, env: dict[str, str], storage: Path,
             during: dict[str, Callable[[subprocess.Popen], None]] | None = None) -> dict[str, dict]:
    """Every stage of ``STAGES`` in turn (train_judge, which trains nothing on this data, between the first two,
    unmeasured: evaluate reads what it leaves); stops at the first that fails."""
    results: dict[str, dict] = {}
    for stage in STAGES:
        watch = prior_checkpoints(storage) if stage == "train_prior" else None
        results[stage] = run_stage(root, stage, env, watch, (during or {}).get(stage))
        if results[stage]["returncode"] != 0:
            print(results[stage]["output"][-3000:], file=sys.stderr)
            break
        if stage == "prepare_data":
            judge = run_stage(root, "train_judge", env)
            if judge["returncode"] != 0:
                print(judge["output"][-3000:], file=sys.stderr)
                break
    return results


def store_hash(store: Path) -> str | None:
    """sha256 over a code store's LMDB records (key and value, in key order): equal stores, equal hashes,
    whatever the file's page layout."""
    import lmdb

    if not (store / "data.mdb").is_file():
        return None
    digest = hashlib.sha256()
    env = lmdb.open(str(store), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(8, "little") + value)
    finally:
        env.close()
    return digest.hexdigest()


def model_fingerprint(root: Path) -> str | None:
    path = root / "models" / "vqvae" / "model.pt"
    if not path.is_file():
        return None
    done = subprocess.run([PYTHON, "-c", "import sys; from sparse_vqvae.train import load_checkpoint; "
                           "print(load_checkpoint(sys.argv[1]).model.fingerprint())", str(path)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def one_node(size: int, scratch: Path) -> dict[str, Any]:
    """The pipeline on ``size`` images with each stage's own local Ray (stage 1, and extraction and the prior
    where they run on Ray): the measured stages, the split sizes and the code stores' hashes."""
    images = make_images(size)
    root = workspace(scratch / f"one-node-{size}", images)
    env = environment(RAY_TMPDIR=str(scratch / "ray"))
    print(f"one node, {size:,} images: {root}", flush=True)
    stages = pipeline(root, env, root / "checkpoints")
    summary = json.loads((root / "metrics" / "prepare_data.json").read_text())
    return {"root": str(root), "stages": stages, "prepared": summary,
            "codes": {split: store_hash(root / "codes" / split) for split in ("train", "test")},
            "model": model_fingerprint(root)}


# ----------------------------------------------------------------------------------------- a Ray cluster

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each node's address: loopback ones, so that the nodes and the stages reach each other through loopback alone.
# Not 127.0.0.1: Ray replaces "localhost" addresses with the machine's outward one
# (ray._private.services.resolve_ip_for_localhost), so a cluster "on 127.0.0.1" runs on the network interface's
# address; other 127.x.y.z it leaves as they are. (Ray 2.60's GCS and raylets listen on every interface, "::",
# whatever the address: its own doing, as every local Ray instance of the pipeline's stages.)
LOOPBACK = {"head": "127.0.0.2", "node2": "127.0.0.3"}


class Cluster:
    """A Ray cluster of this script's own on this machine's loopback: a head and worker nodes, each a ``ray start
    --block`` that leads a session of its own (so a node's processes are found by that session, and killed by id),
    each with its own --temp-dir and ports; token authentication, the token in a home folder of its own."""

    READY = "This command will now block forever"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.starts = 0
        self.env = environment(HOME=str(self.home), RAY_AUTH_MODE="token", RAY_TMPDIR=str(folder / "tmp"))
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, check=True, capture_output=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK['head']}:{self.port}"

    def start(self, name: str, cpus: int = 1, timeout: float = 180) -> None:
        """Start node ``name`` (the first one started is the head) and wait until it is up."""
        head = not self.nodes and name == "head"
        command = [RAY, "start", "--block", f"--num-cpus={cpus}", "--num-gpus=0",
                   f"--temp-dir={self.folder / name}", "--disable-usage-stats",
                   f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                   f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        command += [f"--node-ip-address={LOOPBACK[name]}"]
        command += (["--head", f"--port={self.port}", "--include-dashboard=false"] if head
                    else [f"--address={self.address}"])
        self.starts += 1
        log = self.folder / f"{name}-{self.starts}.log"  # a log a start: its line saying it is up is its own
        with open(log, "w") as out:
            self.nodes[name] = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.READY not in log.read_text():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def kill(self, name: str) -> int:
        """SIGKILL every process of node ``name`` (its raylet, agents, workers and actors), as a lost machine."""
        process = self.nodes.pop(name)
        count = kill_session(process.pid)
        process.wait()
        return count

    def stop(self) -> None:
        """Kill every node, the workers first."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.kill(name)


# ------------------------------------------------------------------------------------- two nodes, one lost

RESTART_AFTER = 10.0  # seconds a killed node stays down


def _on_node(cluster: Cluster, node: str, title: str) -> bool:
    """Whether a process of node ``node`` is titled ``title`` (an actor or a worker of the stage; while its
    constructor runs, an actor's title ends in ``.__init__``)."""
    process = cluster.nodes.get(node)
    if process is None:
        return False
    for member in session_members(process.pid):
        try:
            if _label(member) == title:
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


def node_killer(cluster: Cluster, report: dict, ready: Callable[[], bool], settle: float = 2.0
                ) -> Callable[[subprocess.Popen], None]:
    """Beside a stage: once ``ready()`` (and ``settle`` seconds more), kill node2 while the stage runs, start it
    again ``RESTART_AFTER`` seconds later; what happened goes into ``report``."""

    def during(stage: subprocess.Popen) -> None:
        start = time.monotonic()
        while not ready():
            if stage.poll() is not None:
                report.update(killed=False, why="the stage ended before its work reached node2")
                return
            time.sleep(0.1)
        time.sleep(settle)
        if stage.poll() is not None:
            report.update(killed=False, why="the stage ended before the kill")
            return
        report.update(killed=True, at_s=round(time.monotonic() - start, 1), processes=cluster.kill("node2"))
        time.sleep(RESTART_AFTER)
        report["stage_running_at_restart"] = stage.poll() is None
        cluster.start("node2")
        report["restarted_at_s"] = round(time.monotonic() - start, 1)
        print(f"    node2 killed at {report['at_s']} s ({report['processes']} processes), started again at "
              f"{report['restarted_at_s']} s", flush=True)

    return during


def cluster_env(cluster: Cluster, storage: Path, **extra: str) -> dict[str, str]:
    """The stages' settings for the cluster: its address, a checkpoint storage every node reads (one machine: a
    folder), one CPU a worker, restarts for a lost node."""
    return {**cluster.env, "SPARSE_VQVAE_RAY_ADDRESS": cluster.address, "SPARSE_VQVAE_RAY_STORAGE_PATH": str(storage),
            "SPARSE_VQVAE_RAY_CPUS_PER_WORKER": "1", "SPARSE_VQVAE_RAY_MAX_FAILURES": "3", **extra}


def two_node(cluster: Cluster, scratch: Path, size: int, reference: dict) -> dict[str, Any]:
    """The pipeline on the two-node cluster, node2 killed mid-extraction and mid-prior; its code stores against
    the one-node run's (``reference``). The prior trains on 2 workers here, one a node: with the pipeline's one,
    Ray may place it on the head, and losing node2 would test nothing."""
    images = make_images(size)
    root = workspace(scratch / f"two-node-{size}", images, workers_param(2))
    storage = scratch / "two-node-storage"
    env = cluster_env(cluster, storage)
    print(f"two nodes, {size:,} images: {root}", flush=True)
    kills: dict[str, dict] = {"extract_codes": {}, "train_prior": {}}
    during = {
        # an Encoder actor on node2 (Ray Data's map worker), constructed: encoding batches
        "extract_codes": node_killer(cluster, kills["extract_codes"],
                                     lambda: _on_node(cluster, "node2", "ray::MapWorker(MapBatches(Encoder))")),
        # a training worker on node2, and a checkpoint to resume from: at once, while the top map trains (its
        # checkpoints come a fraction of a second apart)
        "train_prior": node_killer(cluster, kills["train_prior"],
                                   lambda: bool(prior_checkpoints(storage)())
                                   and _on_node(cluster, "node2", "ray::RayTrainWorker"),
                                   settle=0.0),
    }
    stages = pipeline(root, env, storage, during)
    finished = len(stages) == len(STAGES) and all(s["returncode"] == 0 for s in stages.values())
    codes = {split: store_hash(root / "codes" / split) for split in ("train", "test")}
    if "train_prior" in stages:  # the steps each map resumed from
        kills["train_prior"]["resumed_from"] = re.findall(r"map (\w+): starting at step (\d+) \(resumed\)",
                                                          stages["train_prior"]["output"])
    resumed = []
    for stage, report in kills.items():
        result = stages.get(stage)
        if report.get("killed") and result is not None and result["returncode"] == 0:
            if stage != "train_prior" or "(resumed)" in result["output"]:
                resumed.append(stage)
    out = {"root": str(root), "finished": finished, "prior_workers": 2, "stages": stages, "kills": kills,
           "resumed_stages": resumed,
           "codes": codes, "same_codes": codes == reference["codes"] and None not in codes.values(),
           "model": model_fingerprint(root)}
    out["same_model"] = out["model"] == reference["model"]
    if finished and not out["same_codes"]:  # the kill, or the placement? Extract again on the cluster, no kill.
        again = run_stage(root, "extract_codes", env)
        out["codes_without_kill"] = {split: store_hash(root / "codes" / split) for split in ("train", "test")}
        out["codes_without_kill_returncode"] = again["returncode"]
    return out


# ----------------------------------------------------------------------------------------------- throughput

def prior_steps_per_s(writes: dict[str, list[int]], checkpoint_every: int, steps: int) -> float | None:
    """Training steps a second from the times a prior's checkpoint file was rewritten (every
    ``checkpoint_every`` steps, the last at ``steps``): the steps between each map's first and last write over
    the time between them; None where a write was missed."""
    total_steps, total_ns = 0, 0
    for times in writes.values():
        if len(times) != steps // checkpoint_every or len(times) < 2:
            return None
        total_steps += checkpoint_every * (len(times) - 1)
        total_ns += times[-1] - times[0]
    return total_steps / (total_ns / 1e9) if total_ns else None


def workers_param(count: int) -> dict[str, dict]:
    """The parameters that set the stages' worker counts: ray.num_workers (stage 1's workers, extraction's actors on
    a cluster) and prior.num_workers."""
    return {"ray": {"num_workers": count}, "prior": {"num_workers": count}}


THROUGHPUT_PRIOR = {"steps": 200, "checkpoint_every": 50}  # writes 50 steps apart: none missed at 0.2 s


def throughput(cluster: Cluster, scratch: Path, trained: Path, counts: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Extraction images/s and prior steps/s with ``counts`` workers of one CPU on the cluster, from a copy of the
    two-node workspace ``trained`` (its prepared data and VQ-VAE); a storage folder a run (nothing resumed)."""
    out: dict[str, Any] = {"extract_images_per_s": {}, "prior_steps_per_s": {}, "workers_reported": {},
                           "cpus_per_worker": 1, "nodes": 2, "prior": THROUGHPUT_PRIOR}
    for count in counts:
        root = scratch / f"throughput-{count}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(trained, root, symlinks=True,
                        ignore=shutil.ignore_patterns("codes", "mlflow.db", "mlartifacts"))
        params = workers_param(count)
        set_params(root, **params | {"prior": params["prior"] | THROUGHPUT_PRIOR})
        storage = scratch / f"throughput-storage-{count}"
        env = cluster_env(cluster, storage)
        print(f"throughput, {count} worker(s): {root}", flush=True)
        extract = run_stage(root, "extract_codes", env)
        prior = (run_stage(root, "train_prior", env, prior_checkpoints(storage))
                 if extract["returncode"] == 0 else None)
        out["extract_images_per_s"][str(count)] = extract["timings"].get("train_images_per_s")
        out["prior_steps_per_s"][str(count)] = (prior_steps_per_s(prior["writes"], THROUGHPUT_PRIOR["checkpoint_every"],
                                                                  THROUGHPUT_PRIOR["steps"]) if prior else None)
        reported = {}
        for stage, result in (("extract_codes", extract), ("train_prior", prior)):
            found = re.search(r"(\d+) (?:CPU |GPU )?(?:actor|worker)\(s\)", result["output"]) if result else None
            reported[stage] = int(found.group(1)) if found else None
        out["workers_reported"][str(count)] = reported
        out.setdefault("seconds", {})[str(count)] = {"extract_codes": extract["seconds"],
                                                     "train_prior": prior["seconds"] if prior else None}
    return out


# ---------------------------------------------------------------------------------------------------- main

def machine() -> dict[str, Any]:
    import ray
    import torch

    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if line.startswith("Model name")), "unknown")
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__, "ray": ray.__version__}


def source() -> dict[str, Any]:
    """The commit measured, and the files of the stages' code that differ from it (work in progress)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", "sparse_vqvae", "tasks", "dvc.yaml"], cwd=REPO,
                             capture_output=True, text=True).stdout.split("\n")
    return {"commit": commit, "uncommitted": sorted(line[3:] for line in changed if line.strip())}


def summarise(runs: dict[int, dict]) -> dict[str, dict]:
    """Per stage: peak RSS and seconds at each size, the growth from the smallest to the largest size and whether
    it meets the target, and the processes that made each peak (the five largest)."""
    small, large = min(runs), max(runs)
    stages = {}
    for stage in STAGES:
        if not all(stage in runs[size]["stages"] and runs[size]["stages"][stage]["returncode"] == 0 for size in runs):
            stages[stage] = {"failed": [size for size in runs
                                        if runs[size]["stages"].get(stage, {}).get("returncode") != 0]}
            continue
        rss = {str(size): round(runs[size]["stages"][stage]["peak_rss_mb"], 1) for size in sorted(runs)}
        growth = rss[str(large)] / rss[str(small)] - 1
        stages[stage] = {
            "peak_rss_mb": rss,
            "seconds": {str(size): round(runs[size]["stages"][stage]["seconds"], 1) for size in sorted(runs)},
            "rss_growth": round(growth, 4), "target_met": growth <= GROWTH_TARGET,
            "peak_processes_mb": {str(size): runs[size]["stages"][stage]["peak_processes_mb"][:5]
                                  for size in sorted(runs)},
            "peak_rss_kinds_mb": {str(size): runs[size]["stages"][stage]["peak_rss_kinds_mb"] for size in sorted(runs)}}
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=SIZES, help="the two image counts compared")
    parser.add_argument("--no-two-node", action="store_true", help="skip the two-node cluster and the throughput")
    parser.add_argument("--two-node-size", type=int, help="images of the two-node run (default: the larger size; "
                        "extraction long enough to lose a node in the middle of it)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the 1- and 2-worker throughput")
    parser.add_argument("--keep", action="store_true",
                        help="keep the workspaces (their logs/ hold each stage's output)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="svqs-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    print(f"workspaces in {scratch}", flush=True)
    result: dict[str, Any] = {"machine": machine(), "source": source(), "settings": SMALL,
                              "growth_target": GROWTH_TARGET}
    try:
        runs = {size: one_node(size, scratch) for size in sorted(args.sizes)}
        result["sizes"] = {str(size): {"train_images": run["prepared"]["train_images"],
                                       "test_images": run["prepared"]["test_images"]} for size, run in runs.items()}
        result["stages"] = summarise(runs)
        met = [s.get("target_met", False) for s in result["stages"].values()]
        targets = {"rss_growth": all(met)}
        if not args.no_two_node:
            cluster = Cluster(scratch / "cluster")
            try:
                cluster.start("head")
                cluster.start("node2")
                size = args.two_node_size or max(args.sizes)
                reference = runs[size] if size in runs else one_node(size, scratch)
                two = two_node(cluster, scratch, size, reference)
                result["two_node"] = {
                    "finished": two["finished"], "same_codes": two["same_codes"],
                    "resumed_stages": two["resumed_stages"],
                    "images": size, "same_model": two["same_model"], "kills": two["kills"],
                    "prior_workers": two["prior_workers"],
                    "seconds": {stage: round(s["seconds"], 1) for stage, s in two["stages"].items()},
                    "codes": two["codes"], "one_node_codes": reference["codes"]}
                if "codes_without_kill" in two:
                    result["two_node"]["codes_without_kill"] = two["codes_without_kill"]
                targets["two_node_finishes"] = two["finished"]
                targets["two_node_same_codes"] = two["same_codes"]
                if not args.no_throughput and two["stages"].get("train_vqvae", {}).get("returncode") == 0:
                    result["throughput"] = throughput(cluster, scratch, Path(two["root"]))
            finally:
                cluster.stop()
        result["targets"] = targets
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.output, result)
    print(json.dumps({k: result[k] for k in ("stages", "targets") if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
