"""Two torchrun "nodes" on this machine: c10d rendezvous, gloo, one CPU rank each, one shared cache.

The run is the bundle's multi-GPU configuration as a user launches it on two machines (only the
addresses differ). What each rank did is recorded by :class:`ShardProbe`, a small handler the test
adds through a third config file: the training items of every batch and the images each rank
pushed through the deterministic chain (the cache fill).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # subprocess trainings (bundle runs, torchrun): seconds to minutes each

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TIME_LIMIT_S = 120  # the whole launch: about 60 s on a loaded 2-core machine (load 2.5)
IMAGE_SIZE = [96, 64]
TRAIN_ITEMS = 12  # breasts (two views each): 6 per rank, 2 batches of 3, nothing dropped
BATCH_SIZE = 3
EVALUATE_DATALIST = "$mammoclip_monai.data.datalists.select_split(@vindr_items, @eval_split)"  # README
EPOCHS = 2


class ShardProbe:
    """Ignite handler (test only): which items this rank trained on and which images it computed.

    ``watch_cache()`` wraps ``CachedPreprocessd._compute`` (the uncached chain) so that every
    computation of an image is counted, whoever asked for it (the fill or a later cache miss).
    The record is ``<directory>/rank<RANK>.json``, rewritten after every epoch.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.rank = int(os.environ.get("RANK", "-1"))
        self.epochs: dict[int, list[str]] = {}
        self.computed: list[str] = []
        self.env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")}

    def watch_cache(self) -> ShardProbe:
        from mammoclip_monai.data.cache import CachedPreprocessd

        original, probe = CachedPreprocessd._compute, self

        def counted(chain: CachedPreprocessd, source: str, fill: Any) -> Any:
            probe.computed.append(os.path.abspath(source))
            return original(chain, source, fill)

        CachedPreprocessd._compute = counted
        return self

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self.record_batch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def record_batch(self, engine: Any) -> None:
        batch = engine.state.batch  # an item is its source schema and its first view's file
        names = zip(batch["source"], batch["image"].meta["filename_or_obj"])
        self.epochs.setdefault(int(engine.state.epoch), []).extend(item_name(*name) for name in names)

    def write(self, engine: Any = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.rank, "env": self.env, "epochs": self.epochs, "computed": self.computed}
        (self.directory / f"rank{self.rank}.json").write_text(json.dumps(record))


def item_name(source: str, image: str) -> str:
    """A training item: the same file may come through two schemas (image-text and VinDr-style)."""
    return f"{source}:{os.path.abspath(image)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def overrides_for(dataset_dir: Path, out: Path) -> dict:
    return {
        "dataset_dir": str(dataset_dir), "ckpt_dir": str(out / "models"), "output_dir": str(out / "logs"),
        "cache_dir": str(out / "cache"), "image_size": IMAGE_SIZE, "max_epochs": EPOCHS,
        "batch_size": BATCH_SIZE, "preprocess_workers": 0,
        "train#datalist": f"$mammoclip_monai.data.datalists.group_views(@train#datalist_by_image)[:{TRAIN_ITEMS}]",
    }


def expected_items(overrides: dict) -> tuple[dict[str, list[dict]], Any]:
    """The datalists of the run and its cached chain, from the same configs and overrides (no training)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    for key, value in overrides.items():
        parser[key] = value
    items = {split: parser.get_parsed_content(f"{split}#datalist") for split in ("train", "validate", "test")}
    return items, parser.get_parsed_content("deterministic_transforms")[0]


def stop(processes: list[subprocess.Popen]) -> None:
    """End both launchers and everything they started (each runs in a session of its own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
    for proc in processes:  # the workers of a launcher that exited first
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def launch_two_nodes(overrides: list[dict], probe_config: Path, logs: Path) -> tuple[list[int], float]:
    """Start node 0 and node 1 (``overrides[node]``) as two torchrun launchers; exit statuses, wall time."""
    port, run_id = free_port(), f"mammoclip-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                        "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]))
    configs = repr([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(probe_config)])
    processes: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        for node in (0, 1):
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                       "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                       "--rdzv_id", run_id, "--local_addr", "127.0.0.1", "--max_restarts", "0",
                       "-m", "monai.bundle", "run", "training", "--config_file", configs, *cli_args(overrides[node])]
            log = open(logs / f"node{node}.log", "w")  # noqa: SIM115 - closed with the process below
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            log.close()
        codes = [proc.wait(timeout=max(1.0, TIME_LIMIT_S - (time.monotonic() - start))) for proc in processes]
        return codes, time.monotonic() - start
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two-node run took over {TIME_LIMIT_S} s; logs:\n{tails(logs)}")
    finally:
        stop(processes)


def tails(logs: Path, chars: int = 3000) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(logs.glob("*.log")))


def test_two_nodes_share_one_cache_and_split_the_data(synthetic_dataset, tmp_path):
    out, logs, probes = tmp_path / "run", tmp_path / "launch", tmp_path / "probes"
    logs.mkdir()
    overrides = overrides_for(synthetic_dataset, out)
    # ckpt_dir and the cache are shared (every rank reads model.pt for the final test); the logs are
    # each node's own, as on machines without a shared disk: only rank 0's node may get any
    per_node = [dict(overrides, output_dir=str(out / f"logs-node{node}")) for node in (0, 1)]
    probe_config = tmp_path / "probe.json"
    probe_config.write_text(json.dumps({
        "shard_probe": {"_target_": "test_multinode.ShardProbe", "directory": str(probes)},
        "+initialize": ["$@shard_probe.watch_cache()"],  # before any dataset exists, so before the fill
        "training": ["$@shard_probe.attach(@train#trainer)", "$@train#trainer.run()"],
    }))
    codes, seconds = launch_two_nodes(per_node, probe_config, logs)
    assert codes == [0, 0], tails(logs)
    assert seconds < TIME_LIMIT_S

    # each launcher ran one worker: global ranks 0 and 1 of a world of two, local rank 0 on both
    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in probes.glob("rank*.json"))}
    assert sorted(records) == [0, 1], tails(logs)
    for rank, record in records.items():
        assert record["env"] == {"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": str(rank)}

    # training: every epoch the two shards are disjoint, equal and cover the datalist; reshuffled per epoch
    items, chain = expected_items(overrides)
    train_images = [item_name(item["source"], item["image"]) for item in items["train"]]
    assert len(train_images) == len(set(train_images)) == TRAIN_ITEMS
    shards = {}
    for epoch in range(1, EPOCHS + 1):
        seen = [records[rank]["epochs"][str(epoch)] for rank in (0, 1)]
        assert [len(s) for s in seen] == [TRAIN_ITEMS // 2] * 2
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(train_images)
        shards[epoch] = set(seen[0])
    assert shards[1] != shards[2], "the DistributedSampler's epoch was not set: the same shards every epoch"

    # the shared cache: every image of the splits used exactly once, computed once by one rank, readable
    views = ("image", "image2")
    wanted = {os.path.abspath(item[key]) for split in items.values() for item in split for key in views if key in item}
    computed = Counter(path for record in records.values() for path in record["computed"])
    assert set(computed) == wanted and max(computed.values()) == 1, "an image was computed twice (or never)"
    assert all(records[rank]["computed"] for rank in (0, 1)), "one rank filled the whole cache"
    assert chain.cache.count() == len(wanted)

    def not_cached(source: str, fill: Any) -> None:
        raise AssertionError(f"{source} is not in the cache (or its entry does not load)")

    chain._compute = not_cached  # every image now comes from its entry or the test fails
    for path in sorted(wanted):
        assert tuple(chain.preprocess(path).shape) == (1, *IMAGE_SIZE)

    # outputs: rank 0 wrote the weights, the run record and the metrics (both ranks' test shard in them)
    written = [node for node in (0, 1) if (out / f"logs-node{node}").exists()]
    assert len(written) == 1, f"rank 1 wrote into its output_dir: {sorted((out / 'logs-node1').rglob('*'))}"
    logs_dir = out / f"logs-node{written[0]}"
    models = out / "models"
    assert (models / "model.pt").is_file() and (models / "last.pt").is_file()
    assert (models / "pretrained" / "model.safetensors").is_file()
    assert json.loads((models / "run.json").read_text())["status"] == "finished"
    metrics = json.loads((logs_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["history"]] == list(range(1, EPOCHS + 1))
    assert "test_zs_auroc_mass" in metrics["test"]
    events = list((logs_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, f"only rank 0 writes TensorBoard events, found {len(events)} files"


def example_parser(dataset_dir: Path, *extra: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = ["train.json", "paper_b5.json", *extra, "vindr_example.json"]
    parser.read_config([str(CONFIGS / name) for name in files])
    parser["dataset_dir"] = str(dataset_dir)
    return parser


@pytest.mark.parametrize("extra", [(), ("multi_gpu_train.json",)])
def test_the_vindr_example_builds_its_datalists(synthetic_dataset, tmp_path, extra):
    """The real-data example parses over train.json (+ paper_b5, + multi-GPU), pointed at VinDr-style CSVs."""
    from mammoclip_monai.data.cache import CachedPreprocessd

    parser = example_parser(synthetic_dataset, *extra)
    for key in ("dataset_dir", "cache_dir", "ckpt_dir", "output_dir", "val_fraction", "vindr_image_dir"):
        assert key in parser, key
    assert parser["preset"] == "paper_b5" and list(parser["image_size"]) == [1520, 912]
    parser["cache_dir"] = str(tmp_path / "cache")
    splits = {name: parser.get_parsed_content(key) for name, key in
              (("train", "train#datalist_by_image"), ("val", "validate#datalist"), ("test", "test#datalist"))}
    patients = {}
    for name, items in splits.items():
        assert items and {it["source"] for it in items} == {"vindr"} and {it["split"] for it in items} == {name}
        assert all(Path(it["image"]).is_file() and it["image"].endswith(".dicom") for it in items)
        patients[name] = {it["patient_id"] for it in items}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    breasts = parser.get_parsed_content("train#datalist")  # the multi-view pairs (CC + MLO of one breast)
    assert breasts and all("image2" in it for it in breasts)
    # `mammoclip preprocess --height 1520 --width 912` fills the entries this configuration reads
    chain = parser.get_parsed_content("deterministic_transforms")[0]
    cli_chain = CachedPreprocessd(keys="image", spatial_size=(1520, 912), cache_dir=tmp_path / "cache")
    assert chain.cache_key == cli_chain.cache_key


def test_the_vindr_example_evaluates_its_test_split(synthetic_dataset):
    """The evaluation command of bundle/docs/README.md: evaluate.json reads the VinDr test split."""
    parser = example_parser(synthetic_dataset, "evaluate.json")
    parser["evaluate#datalist"] = EVALUATE_DATALIST
    items = parser.get_parsed_content("evaluate#datalist")
    assert items and {it["split"] for it in items} == {"test"} and {it["source"] for it in items} == {"vindr"}


def test_each_node_fills_its_own_cache_when_caches_are_per_node(monkeypatch):
    """cache_shared false: a node's ranks fill everything between them (local ranks), not a global share."""
    from monai.bundle import ConfigParser

    for name, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    for shared, expected in ((True, (5, 8)), (False, (1, 4))):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
        parser["cache_shared"] = shared
        got = (parser.get_parsed_content("make_dataset#rank"), parser.get_parsed_content("make_dataset#world_size"))
        assert got == expected
        # every split's dataset is built by that one factory (its share of the fill included)
        assert {parser[f"{split}#dataset#_target_"] for split in ("train", "validate", "test")} == {"@make_dataset"}
