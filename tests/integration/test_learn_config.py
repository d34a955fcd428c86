"""The typed learner config: YAML + CLI overrides, --help, named errors, the node's parameters,
the config saved in every checkpoint and the resume that refuses a change of model shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from habc_learner.core import learner_config as L
from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import scenario_episode
from habc_learner.core.methods import METHODS
from habc_learner.learn import main


def test_yaml_then_cli_overrides_and_the_old_flags(tmp_path: Path) -> None:
    path = tmp_path / "learner.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "habc_v",
                "steps_per_round": 7,
                "critic": {"efficiency_target": "mc", "lr": 0.001},
                "policy": {"cameras": ["top"], "image_size": [48, 64]},
            }
        )
    )
    config = L.parse_cli(
        ["--config_path", str(path), "--critic.efficiency_target", "td", "--bags", "a", "b"]
    )
    assert config.method == "habc_v" and config.steps_per_round == 7
    assert config.critic.efficiency_target == "td" and config.critic.lr == 0.001  # CLI wins
    assert config.policy.cameras == ("top",) and config.policy.image_size == (48, 64)
    assert config.bag_dirs == (Path("a"), Path("b"))
    old = L.parse_cli(
        [
            *("--bags", "x", "--out", "o", "--steps", "3", "--min-new", "2"),
            *("--batch-size", "16", "--threads", "1", "--watch", "--no-env-state"),
            *("--cameras", "top,left_wrist", "--image-size", "32", "--augment", "crop"),
            *("--augment-pad", "2", "--init", "ckpt"),
        ]
    )
    assert (old.bag_dirs, old.out_dir, old.steps_per_round, old.min_new_episodes) == (
        (Path("x"),),
        Path("o"),
        3,
        2,
    )
    assert (old.batch_size, old.torch_threads, old.watch, old.init_checkpoint) == (
        16,
        1,
        True,
        Path("ckpt"),
    )
    p = old.policy
    assert (p.use_env_state, p.cameras, p.image_size, p.image_augment, p.augment_pad) == (
        False,
        ("top", "left_wrist"),
        (32, 32),
        "crop",
        2,
    )


def test_help_lists_the_methods_and_every_knob_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for method in METHODS:
        assert method in text
    for key in L.flat_defaults():
        assert f"--{key} " in text, key
    assert "--critic.efficiency_target str (one of td, mc; default: mc)" in text
    assert "--critic.lr float (default: 0.0003)" in text
    assert "--policy.hidden_dim [int] (default: unset)" in text
    assert "--stale_cutoff int Stale-rollout cutoff in learner steps. (default: 10000)" in text


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--critic.efficiency_target", "tdd"], ["critic.efficiency_target", "'td'", "'mc'"]),
        (["--method", "habx"], ["--method", "'habx'", "habc_ir", "sft"]),
        (["--policy.image_augment", "blur"], ["--policy.image_augment", "none", "crop"]),
        (["--window.labeling", "smart"], ["labeling", "intervention_aware", "naive"]),
        (["--critic.lr", "fast"], ["critic.lr", "'fast'", "float"]),
        (["--steps", "0"], ["steps_per_round", ">= 1"]),
    ],
)
def test_a_bad_value_names_the_key_and_the_choices(
    argv: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err, (text, err)


def test_yaml_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"`policy.image_augment`.*none, shift, crop"):
        L.load({"policy": {"image_augment": "blur"}})
    with pytest.raises(ValueError, match=r"critic.td_bootstrap='x' is not one of"):
        L.load({"critic": {"td_bootstrap": "x"}})


def test_the_node_parameters_are_the_config_keys() -> None:
    defaults = L.node_parameter_defaults()
    assert defaults["critic.efficiency_target"] == "mc"
    assert defaults["policy.cameras"] == "" and defaults["policy.image_size"] == [96, 96]
    assert defaults["count_demos"] is False and defaults["min_new_episodes"] == 10  # the node's
    assert "watch" not in defaults and "rounds" not in defaults
    config = L.from_node_parameters(
        {
            **defaults,
            "bag_dirs": ["/data/bags"],
            "critic.efficiency_target": "td",
            "policy.cameras": "top,left_wrist",
            "policy.image_size": "48x64",  # what `image_size:=48x64` of the graph passes
            "policy.hidden_dim": 128,
            "init_checkpoint": "",
        }
    )
    assert config.bag_dirs == (Path("/data/bags"),) and config.init_checkpoint is None
    assert config.critic.efficiency_target == "td" and config.count_demos is False
    assert config.policy.cameras == ("top", "left_wrist") and config.image_size == (48, 64)
    assert config.policy.hidden_dim == 128 and config.policy.horizon is None
    with pytest.raises(ValueError, match=r"critic\.efficiency_target='x' is not one of"):
        L.from_node_parameters({**defaults, "critic.efficiency_target": "x"})


BASE = ["--method", "habc", "--batch-size", "16", "--threads", "1", "--steps", "2"]


def test_config_saved_with_every_checkpoint_and_resume_refuses_a_new_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bags, out = tmp_path / "bags", tmp_path / "learner"
    bags.mkdir()
    for i, scenario in enumerate(["demo", "autonomous_success", "takeover_failure"]):
        write_episode(bags / f"{scenario}-{i}", scenario_episode(scenario, seed=i, length=80))
    small = ["--critic.hidden_dim", "32", "--policy.hidden_dim", "64", "--policy.feature_dim", "32"]
    args = ["--bags", str(bags), "--out", str(out), *BASE, *small]
    assert main([*args, "--critic.efficiency_target", "td"]) == 0
    ckpt = out / "checkpoints" / "step_000000002"
    saved = json.loads((ckpt / L.CONFIG_FILE).read_text())
    assert saved["critic"]["efficiency_target"] == "td" and saved["policy"]["hidden_dim"] == 64
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert L.CONFIG_FILE in manifest["files"]  # hashed with the checkpoint
    # The saved config is a config file: it reproduces the run's config.
    again = L.parse_cli(["--config_path", str(ckpt / L.CONFIG_FILE)])
    assert again == L.load(saved) and again.critic.efficiency_target == "td"

    write_episode(bags / "new-9", scenario_episode("two_takeovers", seed=9, length=80))
    capsys.readouterr()
    for change, named in (
        (["--critic.hidden_dim", "48"], "critic.hidden_dim: 32 -> 48"),
        (["--policy.hidden_dim", "128"], "policy.hidden_dim: 64 -> 128"),
        (["--method", "habc_v"], "method: 'habc' -> 'habc_v'"),
    ):
        i = args.index(change[0]) if change[0] in args else None
        argv = list(args)
        if i is not None:
            argv[i + 1] = change[1]
        else:
            argv += change
        assert main(argv) == 2, change
        err = capsys.readouterr().err
        assert "another model shape" in err and named in err, err
    assert not (out / "checkpoints" / "step_000000004").exists()
    # A change that keeps the shape resumes (and is saved with the next checkpoint).
    assert main([*args, "--critic.lr", "0.001", "--critic.efficiency_target", "mc"]) == 0
    saved = json.loads((out / "checkpoints" / "step_000000004" / L.CONFIG_FILE).read_text())
    assert saved["critic"]["lr"] == 0.001 and saved["critic"]["efficiency_target"] == "mc"


def test_cpu_nice_lowers_the_training_threads_priority(tmp_path: Path) -> None:
    """``cpu_nice`` (``--nice``): the thread that applies it and every thread it starts later run
    at the raised niceness (Linux: a thread's niceness is its own). Run in a child process, since
    niceness cannot be lowered back without privilege."""
    import subprocess
    import sys

    assert L.parse_cli(["--bags", "a", "--nice", "7"]).cpu_nice == 7
    with pytest.raises(ValueError, match="cpu_nice"):
        L.LearnerConfig(bag_dirs=("a",), cpu_nice=20)
    code = """
import os, threading
from habc_learner.core.learner_config import yield_cpu
base = os.nice(0)
seen = {}
def nice_of_this_thread():
    with open(f"/proc/self/task/{threading.get_native_id()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])
print(yield_cpu(7) - base, nice_of_this_thread() - base)
t = threading.Thread(target=lambda: seen.setdefault("child", nice_of_this_thread()))
t.start(); t.join()
print(seen["child"] - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "7", "7"], out.stdout + out.stderr
    node_file = yaml.safe_load((Path(__file__).parents[2] / "config" / "learner.yaml").read_text())
    assert node_file["learner"]["ros__parameters"]["cpu_nice"] == 10
