"""The training process's launch command, and the relay of its output to train.log and stdout."""

from __future__ import annotations

import os

import pytest

from sftflow.tasks.lib.train_launch import launch_command, run_logged


def test_launch_command_uses_this_interpreter_and_cpu_flag(tmp_path):
    command = launch_command(tmp_path / "job.json", 2, use_cpu=True)
    assert command[:3] == [os.sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2" and "--cpu" in command
    assert command[-3:] == ["-m", "sftflow.tasks.lib.train_worker", str(tmp_path / "job.json")]
    assert "--cpu" not in launch_command(tmp_path / "job.json", 1, use_cpu=False)


def test_an_accelerate_config_file_decides_the_launch(tmp_path):
    # several GPUs or machines: the file's settings, not the single-machine defaults
    command = launch_command(tmp_path / "job.json", 4, use_cpu=False, config_file=tmp_path / "multi.yaml")
    assert command[3:5] == ["--config_file", str(tmp_path / "multi.yaml")]
    assert "--num_machines" not in command and "--num_processes" not in command
    assert command[-3:] == ["-m", "sftflow.tasks.lib.train_worker", str(tmp_path / "job.json")]


CHILD_OUTPUT = ("import sys\n"
                "print('[train] step 1/2 loss 2.000')\n"
                "print('Map: 100%|##########| 23/23 [00:00<00:00, 3069.13 examples/s]', file=sys.stderr)\n"
                "print('some library warning', file=sys.stderr)\n"
                "print('[train] step 2/2 loss 1.000')\n")


@pytest.mark.parametrize("terminal", [False, True])
def test_run_logged_echoes_step_lines_or_one_bar_and_logs_everything(tmp_path, monkeypatch, capsys, terminal):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal, raising=False)
    run_logged([sys.executable, "-c", CHILD_OUTPUT], tmp_path, tmp_path / "train.log")
    out, err = capsys.readouterr()
    log = (tmp_path / "train.log").read_text()
    assert "Map: 100%" in log and "some library warning" in log and log.count("[train] step") == 2
    assert "Map" not in out + err and "warning" not in out + err
    # the step lines are printed either way (Prefect relays prints to the run's log and the UI)
    assert out.splitlines() == ["[train] step 1/2 loss 2.000", "[train] step 2/2 loss 1.000"]
    if terminal:  # and one tqdm bar (on stderr) under them, moved to 2/2
        assert "2/2" in err and err.count("train:") >= 1
    else:
        assert err == ""
