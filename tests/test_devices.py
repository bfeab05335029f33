"""One device helper: which device a command runs on, how it is timed, and every script's --device."""
import time

import pytest
import torch

from helpers import BIN, assert_one_clear_error, run, validate, tiny_model
from leebert_plugin.runtime.devices import (
    Stopwatch,
    fairseq_device_args,
    fairseq_env,
    interleaved_seconds,
    place,
    ratios_per_repeat,
    resolve_device,
    seconds,
    to_device,
)
from leebert_plugin.errors import UsageError


@pytest.fixture
def no_cuda(monkeypatch):
    """This process, and the scripts it starts, see no CUDA device (as on the development machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes there are two CUDA devices (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def synchronised(monkeypatch):
    """The devices ``torch.cuda.synchronize`` is called with, in order."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    return calls


# ---- resolve_device -------------------------------------------------------------------------------
def test_the_default_is_the_cpu_without_cuda_and_cuda_with_it(no_cuda, monkeypatch):
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")


def test_the_default_here_is_what_torch_finds():
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["cpu", torch.device("cpu")])
def test_the_cpu_is_accepted(name):
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused_with_the_fix(name, no_cuda):
    with pytest.raises(UsageError, match="finds no CUDA device") as error:
        resolve_device(name)
    assert str(error.value).startswith("leebert-plugin: error: ") and "\n" not in str(error.value)
    assert "--device cpu" in error.value.fix


def test_cuda_devices_torch_has_are_accepted_and_others_refused(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="has 2 CUDA device") as error:
        resolve_device("cuda:2")
    assert "cuda:0 to cuda:1" in error.value.fix


@pytest.mark.parametrize("name, words", [("gpu", "unknown device 'gpu'"), ("meta", "'meta' is not supported")])
def test_other_device_names_are_refused(name, words):
    with pytest.raises(UsageError, match=words) as error:
        resolve_device(name)
    assert "cpu, cuda or cuda:<index>" in error.value.fix


# ---- the synchronised timer -----------------------------------------------------------------------
def test_the_stopwatch_synchronises_cuda_before_each_clock_read(synchronised, monkeypatch):
    """The wait before the start is not timed (earlier work); the wait at the end is (the block's
    own kernels)."""
    waits = iter([0.3, 0.05])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (synchronised.append(device),
                                                                        time.sleep(next(waits))))
    cuda = torch.device("cuda:0")
    with Stopwatch(cuda) as watch:
        pass
    assert synchronised == [cuda, cuda]
    assert 0.05 <= watch.seconds < 0.3


@pytest.mark.parametrize("device", [torch.device("cpu"), None])
def test_the_stopwatch_synchronises_nothing_on_the_cpu(device, synchronised):
    watch = Stopwatch(device)
    for _ in range(2):  # blocks add up
        with watch:
            time.sleep(0.02)
    assert synchronised == []
    assert watch.seconds >= 0.04


def test_seconds_times_one_call(synchronised):
    calls = []
    assert seconds(lambda: (calls.append(1), time.sleep(0.02)), torch.device("cpu")) >= 0.02
    assert calls == [1] and synchronised == []
    seconds(lambda: None, torch.device("cuda:1"))
    assert synchronised == [torch.device("cuda:1")] * 2


def test_variants_take_turns_item_by_item_and_each_gets_its_own_time():
    calls = []
    variants = {name: (lambda j, name=name, pause=pause: (calls.append((name, j)), time.sleep(pause)))
                for name, pause in (("a", 0.0), ("b", 0.01), ("c", 0.0))}
    t = interleaved_seconds(variants, items=2, repeats=2)
    # item by item, the order rotated each turn, across repeats too: with fewer items than
    # variants each variant still takes every place in the order
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1),
                     ("c", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("c", 1)]
    assert {k: len(v) for k, v in t.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(b >= 0.02 > a for a, b in zip(t["a"], t["b"]))  # b's two sleeps are b's alone


def test_ratios_pair_the_variants_repeat_by_repeat():
    times = {"plain": [2.0, 4.0, 3.0], "early": [1.0, 4.0, 1.5]}
    # the slow second repeat fell on both: its ratio is 1, not 4 / 1.5 or 2 / 4
    assert ratios_per_repeat(times, "plain", "early") == [2.0, 1.0, 2.0]
    with pytest.raises(ValueError):  # repeats that do not pair up
        ratios_per_repeat({"a": [1.0, 2.0], "b": [1.0]}, "a", "b")


# ---- moving models and batches --------------------------------------------------------------------
def test_a_batch_moves_whole_to_the_device():
    sample = {"id": torch.arange(3), "nsentences": 3,
              "net_input": {"src_tokens": torch.ones(3, 4, dtype=torch.long), "src_lengths": [torch.ones(3)]}}
    moved = to_device(sample, torch.device("meta"))  # a device every torch has, without data
    assert moved["nsentences"] == 3
    tensors = [moved["id"], moved["net_input"]["src_tokens"], moved["net_input"]["src_lengths"][0]]
    assert all(t.device.type == "meta" for t in tensors)
    assert moved["net_input"]["src_tokens"].shape == (3, 4)


def test_place_keeps_a_model_where_it_is_unless_told(no_cuda):
    model = tiny_model()
    assert place(model) == torch.device("cpu")
    assert place(model, "cpu") == torch.device("cpu")
    with pytest.raises(UsageError):
        place(model, "cuda")
    assert next(model.parameters()).device.type == "cpu"


# ---- fairseq subprocesses -------------------------------------------------------------------------
def test_fairseq_is_told_cpu_only_for_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert fairseq_device_args(cpu) == ["--cpu"]
    assert fairseq_device_args(cpu, hydra=True) == ["common.cpu=true"]
    assert fairseq_device_args(cuda) == [] and fairseq_device_args(cuda, hydra=True) == []


def test_a_fairseq_subprocess_sees_only_its_gpu(two_gpus, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert fairseq_env(torch.device("cuda:1"))["CUDA_VISIBLE_DEVICES"] == "1"
    assert fairseq_env(torch.device("cuda"))["CUDA_VISIBLE_DEVICES"] == "0"  # the current device
    assert "CUDA_VISIBLE_DEVICES" not in fairseq_env(torch.device("cpu"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # indices count among the visible GPUs
    assert fairseq_env(torch.device("cuda:1"))["CUDA_VISIBLE_DEVICES"] == "5"
    assert fairseq_env(torch.device("cpu"))["CUDA_VISIBLE_DEVICES"] == "4,5"


# ---- every script's --device ----------------------------------------------------------------------
SCRIPTS = {  # the least each needs to reach its device check
    "sweep_thresholds.py": ["missing.pt", "missing-data", "--thresholds", "0.5"],
    "validate_thresholds.py": ["missing.pt", "missing-data"],
    "bench_speed.py": [],
    "bench_clo.py": [],
    "benchmark.py": ["--data", "missing-data"],
}
TINY_SPEED = ["--layers", "2", "--dim", "16", "--heads", "2", "--ffn", "32", "--min-len", "4", "--max-len", "8"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_refuses_cuda_without_it_in_one_line(script, no_cuda):
    proc = run([str(BIN / "python"), f"scripts/{script}", *SCRIPTS[script], "--device", "cuda"])
    assert proc.returncode == 1
    assert_one_clear_error(proc, "'cuda'", "finds no CUDA device", "--device cpu")


def test_bench_speed_runs_on_the_cpu():
    proc = run([str(BIN / "python"), "scripts/bench_speed.py", *TINY_SPEED, "--batch-sizes", "2",
                "--samples", "4", "--repeats", "1", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu" in proc.stdout
    (row,) = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert len(row) == 13 and all(float(cell) > 0 for cell in row[1:4])  # plain, early, all-exits ms
    low, high = map(float, row[7].split("-"))  # wall / layer's range over the repeats holds its median
    assert low <= float(row[6]) <= high


@pytest.mark.parametrize("flags, words", [
    (["--min-len", "9", "--max-len", "3"], ("--max-len 3 is below --min-len 9",)),
    (["--exit-probs", "1", "1", "1"], ("3 exit probabilities for a model with 2 exits",)),  # TINY_SPEED: 2 layers
    (["--exit-probs", "0", "0"], ("are not weights", "positive sum")),
    (["--exit-probs", "-1", "1"], ("-1 is below 0",)),
    (["--checkpoint", "x.pt", "--data", "d", "--exit-probs", "1"], ("--exit-probs imposes exits on a random model",)),
])
def test_bench_speed_refuses_bad_settings_in_one_line(flags, words):
    proc = run([str(BIN / "python"), "scripts/bench_speed.py", *TINY_SPEED, "--batch-sizes", "2", "--samples", "2",
                "--repeats", "1", "--device", "cpu", *flags])
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert_one_clear_error(proc, *words)


def test_bench_clo_runs_on_the_cpu():
    proc = run([str(BIN / "python"), "scripts/bench_clo.py", "--layers", "1", "--dim", "16", "--heads", "2",
                "--ffn", "32", "--batch", "4", "--length", "8", "--updates", "2", "--rounds", "1", "--interval", "2",
                "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu" in proc.stdout and "a meta step costs" in proc.stdout


def test_validate_thresholds_on_the_cpu_is_fairseq_validate(trained, mr_bin):
    proc = run([str(BIN / "python"), "scripts/validate_thresholds.py", str(trained / "checkpoint_best.pt"), str(mr_bin),
                "--policy", "normalized_entropy", "--thresholds", "0.98", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu" in proc.stdout
    row = [cell.strip() for cell in proc.stdout.splitlines()[2].split("|")]
    cli = validate(trained, mr_bin, "--exit-policy", "normalized_entropy", "--exit-threshold", "0.98")
    assert row[0] == "0.98"
    assert float(row[1]) == pytest.approx(cli["accuracy"], abs=0.01)
    assert float(row[2]) == pytest.approx(cli["mean_layers"], abs=0.01)
