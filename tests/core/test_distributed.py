"""Several processes with torchrun / DistributedDataParallel, on the CPU with gloo: every
rank holds the same weights after every step, the 2-process loss matches one process on the
same global batch, rank 0 alone writes a checkpoint that loads, `semiseg train` under
torchrun says how many processes trained it and resumes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import synthetic_volume

from src_models.data import SliceSampler, make_volumes
from src_models.data.sampler import Batch
from src_models.training import TrainConfig, distributed, load_model, train
from src_models.training.checkpoint import create_model

# slow: every test starts two training processes (spawn or torchrun) and a gloo group
pytestmark = pytest.mark.slow

TINY = {"channels": "4,8,16,32,64"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FixedBatches(SliceSampler):
    """Labeled batches: rows ``rows`` of one fixed global batch (the same on every run)."""

    def __init__(self, volumes, rows, **kwargs):
        super().__init__(volumes, augment=False, **kwargs)
        g = torch.Generator().manual_seed(5)
        image = torch.randn(4, 1, 32, 32, generator=g)
        label = (image[:, 0] > 0.3).long() + (image[:, 0] > 1.0).long()
        self.fixed = Batch(image[rows], label[rows])

    def labeled(self, n=None, augment=None):
        return self.fixed


def _rank_main(rank, world, port, folder, method):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
    )
    torch.set_num_threads(1)
    distributed.init_from_env(torch.device("cpu"))
    image, labels = synthetic_volume()
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    volumes, k = make_volumes([image], [sparse])
    rows = slice(2 * rank, 2 * rank + 2) if world == 2 else slice(0, 4)
    sampler = FixedBatches(volumes, rows, patch_size=32, batch_size=4 // world, seed=rank)
    params = {**TINY, "optimizer": "sgd"} if method == "supervised" else TINY
    bundle = create_model(method, params, 1, k, seed=0, patch_size=32)
    distributed.distribute(bundle.method)
    same = []
    for step in range(3):
        config = TrainConfig(iterations=step + 1, batch_size=4 // world, patch_size=32, warmup=0)
        train(bundle, sampler, config, out_dir=folder / f"run{world}")
        # parameters (BatchNorm running statistics are each rank's own until rank 0's are
        # broadcast at the next forward)
        weights = [p for net in bundle.method.networks.values() for p in net.parameters()]
        gathered = distributed.gather(torch.cat([w.detach().flatten() for w in weights]))
        same.append(all(torch.equal(gathered[0], g) for g in gathered))
    first = distributed.gather(_first_loss(sampler) if method == "supervised" else None)
    if rank == 0:
        (folder / f"result{world}.json").write_text(json.dumps({"same": same, "first": first}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    # leave without the interpreter's teardown: gloo's threads, destroyed there, are where a
    # rank has aborted natively after its work was done (see ATTEMPTS)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _first_loss(sampler):
    """The supervised loss of the initial weights on this rank's batch (no update)."""
    fresh = create_model("supervised", {**TINY, "optimizer": "sgd"}, 1, 3, seed=0)
    from src_models.losses import ce_dice_loss

    batch = sampler.labeled()
    with torch.no_grad():
        return float(ce_dice_loss(fresh.method.net(batch.image).float(), batch.label))


#: attempts of a multi-process run: gloo on this CPU build sometimes aborts a rank natively
#: ("terminate called without an active exception", SIGABRT) after the DDP steps or at
#: exit, also before this project's code changed (seen 1 in 4 at commit 87b8614; all 3
#: attempts of one run at stop 44); a rank now leaves with ``os._exit`` once its work is
#: done, and a run that still ends that way is started again in a clean folder, anything
#: else fails at once
ATTEMPTS = 5


def run(world, folder, method="supervised"):
    if world == 1:
        os.environ.pop("WORLD_SIZE", None)
    for attempt in range(ATTEMPTS):
        shutil.rmtree(folder / f"run{world}", ignore_errors=True)  # an aborted run's files
        (folder / f"result{world}.json").unlink(missing_ok=True)
        try:
            mp.start_processes(
                _rank_main,
                args=(world, free_port(), folder, method),
                nprocs=world,
                start_method="spawn",
            )
            break
        except mp.ProcessExitedException as exc:
            if "SIGABRT" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
    return json.loads((folder / f"result{world}.json").read_text())


def test_two_processes_hold_the_same_weights_and_match_one_process(tmp_path):
    two = run(2, tmp_path)
    assert two["same"] == [True, True, True]
    one = run(1, tmp_path)
    # same global batch: the mean of the two ranks' losses is the one-process loss (the CE
    # part exactly; the Dice part is pooled per rank)
    assert np.mean(two["first"]) == pytest.approx(one["first"][0], abs=0.02)
    bundle = load_model(tmp_path / "run2")
    assert bundle.iteration == 3
    rows = (tmp_path / "run2" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2, 3]  # rank 0 logged alone
    assert len(bundle.trainer_state["samplers"]) == 2


def test_two_network_method_stays_identical_across_processes(tmp_path):
    assert run(2, tmp_path, "dfcps")["same"] == [True, True, True]


def test_semiseg_train_under_torchrun_and_resume(sparse_niftis):
    tmp_path = sparse_niftis
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        cmd += [f"--master_port={free_port()}", "-m", "napari_semiseg.cli", "train"]
        cmd += ["--image", str(tmp_path / "image.nii.gz")]
        cmd += ["--labels", str(tmp_path / "labels.nii.gz"), "--method", "dfcps"]
        cmd += ["--patch", "32", "--batch-size", "2", "--set", "channels=4,8,16,32,64"]
        done = subprocess.run(
            [*cmd, "--out", str(run_dir), *extra],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = torchrun("--iterations", "4")
    assert out.splitlines()[0].startswith("training with 2 processes")
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["info"]["processes"] == 2 and meta["iteration"] == 4
    first = load_model(run_dir)
    assert first.iteration == 4 and len(first.trainer_state["samplers"]) == 2
    assert "resuming from iteration 4" in torchrun("--iterations", "6", "--resume")
    assert load_model(run_dir).iteration == 6
    rows = (run_dir / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
