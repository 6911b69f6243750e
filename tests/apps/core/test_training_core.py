"""The training core: run options and flags defined once, one Trainer construction, one
checkpoint callback (best/last/history/resume, atomic, surviving --resume)."""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RESUME_NAME, RunOptions, add_run_arguments, config_from_args

REPO_ROOT = Path(__file__).resolve().parents[3]


def _source_files() -> list[Path]:
    return [p for p in (REPO_ROOT / "apps").rglob("*.py") if "__pycache__" not in p.parts]


def test_one_trainer_construction_and_one_checkpoint_callback_in_apps():
    trainers = [p for p in _source_files() if re.search(r"\bL\.Trainer\(|\bTrainer\(", p.read_text())]
    assert [p.relative_to(REPO_ROOT).as_posix() for p in trainers] == ["apps/core/training.py"]
    callbacks = [
        (p.relative_to(REPO_ROOT).as_posix(), name)
        for p in _source_files()
        for name in re.findall(r"^class (\w+)\((?:L\.|pl\.)?Callback\)", p.read_text(), re.M)
    ]
    core = "apps/core/training.py"
    assert sorted(callbacks) == [(core, "RunCheckpoint"), (core, "ThreadsCallback")]


def test_each_run_flag_is_defined_once():
    for flag in ("--max-time", "--resume", "--accelerator", "--strategy", "--num-nodes"):
        defining = [p for p in _source_files() if f'"{flag}"' in p.read_text()]
        assert [p.name for p in defining] == ["run_options.py"], (flag, defining)


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(path, parser)`` of every command of the ``hybrids`` parser, recursively."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*path, name))


def test_every_training_verb_takes_its_run_flags_from_the_core():
    """A verb with ``--resume`` is a training verb: its ``--seed``, ``--precision`` and ``--threads``
    are the core's run flags (group "run"). Inference verbs may have a seed of their own (of the
    noise draws, the random shifts, the initial fields), which is another option."""
    from hybrids.apps.cli import build_parser

    training = []
    for path, parser in _verbs(build_parser()):
        groups = {
            (a.option_strings or [a.dest])[-1]: group.title
            for group in parser._action_groups
            for a in group._group_actions
        }
        if "--resume" not in groups:
            continue
        training.append(" ".join(path))
        for flag in ("--seed", "--precision", "--threads", "--max-time", "--out"):
            assert groups.get(flag) == "run", (path, flag)
    expected = {"music train", "medical train", "medical pretrain-dino", "dna pretrain", "dna finetune"}
    assert expected <= set(training), training


def test_run_flags_map_to_run_options(tmp_path):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, default_out="runs/x")
    args = parser.parse_args(["-o", str(tmp_path), "--max-time", "5", "--devices", "2", "--seed", "3"])
    args.verbose, args.quiet, args.argv = 0, 1, ["app", "train", "-o", str(tmp_path)]

    @dataclass
    class Config:
        lr: float = 1.0
        command: str = ""
        run: RunOptions = field(default_factory=RunOptions)

    config = config_from_args(Config, args, lr=0.5)
    assert config.lr == 0.5 and config.command == f"hybrids app train -o {tmp_path}"
    run = config.run
    assert (run.out, run.max_time, run.devices, run.seed, run.verbosity) == (tmp_path, 5.0, 2, 3, -1)
    assert run.quiet and run.processes == 2 and run.command == config.command


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_time": 0}, "--max-time must be > 0"),
        ({"threads": 0}, "--threads must be >= 1"),
        ({"num_nodes": 0}, "--num-nodes"),
        ({"devices": 0}, "--devices"),
        ({"resume": True}, "nothing to resume"),
    ],
)
def test_bad_run_options_are_one_line(options, message, tmp_path):
    with pytest.raises(InputError, match=message):
        RunOptions(out=tmp_path / "run", **options).check()


def _fake_trainer(step: int, epoch: int = 0) -> SimpleNamespace:
    saved: list[Path] = []

    def save_checkpoint(path):
        Path(path).write_text("state")
        saved.append(Path(path))

    return SimpleNamespace(
        global_step=step,
        current_epoch=epoch,
        is_global_zero=True,
        sanity_checking=False,
        save_checkpoint=save_checkpoint,
        saved=saved,
    )


def test_checkpoint_keeps_best_last_history_and_resume(tmp_path):
    from hybrids.apps.core.training import HISTORY_NAME, RunCheckpoint

    written: list[tuple[str, int]] = []
    scores = iter([0.5, math.nan, 0.7, 0.6, 0.6])

    def save(module, folder, record, extra):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "step").write_text(str(record["step"]))
        written.append((folder.name, record["step"]))

    checkpoint = RunCheckpoint(
        tmp_path,
        record=lambda trainer, module: {"dice": next(scores)},
        score=lambda rec: rec["dice"],
        describe=lambda rec, improved: f"dice {rec['dice']}",
        save=save,
    )
    for step in (10, 20, 30, 40):
        checkpoint.on_validation_end(_fake_trainer(step), None)
    checkpoint.on_validation_end(_fake_trainer(40), None)  # the same weights again: ignored
    assert [r["step"] for r in checkpoint.history] == [10, 20, 30, 40]
    assert checkpoint.best["step"] == 30  # NaN never counts as best
    assert (tmp_path / "best" / "step").read_text() == "30"
    assert (tmp_path / "last" / "step").read_text() == "40"
    assert written.count(("best", 30)) == 1 and ("best", 20) not in written
    history = json.loads((tmp_path / HISTORY_NAME).read_text())
    assert [r["dice"] for r in history] == [0.5, None, 0.7, 0.6]  # strict JSON
    assert (tmp_path / RESUME_NAME).read_text() == "state"
    assert not list(tmp_path.glob(".*part*"))  # the resume file was renamed into place
    # the best score and the history survive --resume
    restored = RunCheckpoint(tmp_path, record=lambda t, m: {"dice": 0.65}, score=lambda r: r["dice"])
    restored.save = save
    restored.load_state_dict(checkpoint.state_dict())
    restored.on_validation_end(_fake_trainer(50), None)
    assert restored.best["step"] == 30 and len(restored.history) == 5


def test_checkpoint_with_tuple_scores_and_epoch_trigger(tmp_path):
    from hybrids.apps.core.training import RunCheckpoint

    records = iter([{"mcc": 0.5, "loss": 0.4}, {"mcc": 0.5, "loss": 0.3}, {"mcc": 0.4, "loss": 0.1}])
    seen = []
    checkpoint = RunCheckpoint(
        tmp_path,
        record=lambda t, m: next(records),
        score=lambda rec: (rec["mcc"], -rec["loss"]),
        save=lambda module, folder, record, extra: seen.append((folder.name, record["step"])),
        trigger="epoch",
        names={"last": "teacher"},
    )
    checkpoint.on_validation_end(_fake_trainer(5), None)  # not this trigger
    for step in (1, 2, 3):
        checkpoint.on_train_epoch_end(_fake_trainer(step, epoch=step), None)
    assert checkpoint.best["step"] == 2  # equal MCC: the lower loss wins
    assert ("teacher", 3) in seen and ("best", 2) in seen and ("best", 3) not in seen
    with pytest.raises(ValueError):
        RunCheckpoint(tmp_path, record=lambda t, m: None, trigger="sometimes")


REDIRECTED_RUN = """
import logging, sys
from pathlib import Path
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from hybrids.apps.core.run_options import RunOptions
from hybrids.apps.core.training import RunCheckpoint, build_trainer, fit

logging.basicConfig(level=logging.INFO, format="%(message)s")

class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 1)
        self.val = []
    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y)
    def validation_step(self, batch, _):
        x, y = batch
        self.val.append(float(torch.nn.functional.mse_loss(self.model(x), y)))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
loader = DataLoader(data, batch_size=8)
module = Module()
run = RunOptions(out=Path(sys.argv[1]), threads=1)

def record(trainer, module):
    loss, module.val = sum(module.val) / len(module.val), []
    return {"loss": loss}

def save(module, folder, record, extra):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), folder / "weights.pt")

checkpoint = RunCheckpoint(
    run.out,
    record=record,
    score=lambda r: -r["loss"],
    describe=lambda r, improved: f"step {r['step']} valid loss {r['loss']:.4f}" + " *" * improved,
    save=save,
)
trainer = build_trainer(run, callbacks=[checkpoint], max_steps=12, val_check_interval=4)
fit(trainer, module, run, train_dataloaders=loader, val_dataloaders=loader)
"""


def test_a_redirected_run_logs_one_line_per_validation(tmp_path):
    """No progress bar, no 'Epoch 0/-2', no library warnings in a log file: one line per validation."""
    import subprocess
    import sys

    log_file = tmp_path / "log.txt"
    with log_file.open("w") as sink:
        done = subprocess.run(
            [sys.executable, "-c", REDIRECTED_RUN, str(tmp_path / "run")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
    text = log_file.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert [line.split()[:2] for line in lines] == [["step", "4"], ["step", "8"], ["step", "12"]], text
    assert (tmp_path / "run" / "best").is_dir() and (tmp_path / "run" / "history.json").is_file()
