"""The front door: what the user writes (command line, config files, the Python API) is what runs,
and every mistake in it is one `error:` line with exit code 2. Every test runs real `train.py` or
`python -m zerosr.doctor` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train import make_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "ZEROSR_FAKE_HARDWARE": "", "PYTHONPATH": str(ROOT / "tests")}
RTX_3090 = {"gpus": [{"name": "NVIDIA GeForce RTX 3090", "vram_gb": 24.0, "compute_capability": [8, 6]}],
            "cpu_cores": 16, "ram_gb": 64.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def train_cli(args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**ENV, **(env or {})}, timeout=timeout)


def doctor_cli(args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerosr.doctor", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=120)


def one_error_line(out: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line (besides preflight's own list) naming `words`."""
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    others = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(("error:", "warning:"))]
    assert not others, out.stderr
    return errors[0]


def config_dir(tmp_path: Path, text: str, name: str = "exp") -> list[str]:
    folder = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*')))}"
    folder.mkdir()
    (folder / f"{name}.yaml").write_text(text)
    return ["--config-dir", str(folder), "--config-name", name]


def saved(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "resolved_config.yaml").read_text())


def small(data) -> list[str]:
    """A path to the test's images and what their size needs (the data choice is left implicit)."""
    return [f"data.gt_path={data[0]}", f"data.lq_path={data[1]}", "data.n_val=2", "train.lq_size=16"]


# --------------------------------------------------------------------------- 1. data


def test_a_data_path_means_the_users_data_with_the_paired_settings(data, tmp_path):
    out = train_cli([*small(data), "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = saved(tmp_path / "run")
    assert cfg["data"]["name"] == "paired" and cfg["data"]["run_iter"] is None
    assert cfg["train"]["total_iter"] == 40_000  # the preset's run, not the demo's 400
    assert f"dataset      paired: {data[0]}" in out.stdout
    overrides = yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    assert "data=paired" in overrides  # the implied choice is recorded with the run
    ok = doctor_cli(small(data))
    assert ok.returncode == 0 and "12 images, 6 pairs checked" in ok.stdout, ok.stderr  # the user's data


def test_demo_named_with_a_path_is_one_error_line(data, tmp_path):
    one_error_line(train_cli(["data=demo", *small(data), "dry_run=true"], tmp_path), "data=demo", "data.gt_path")
    one_error_line(doctor_cli(["data=demo", *small(data)]), "data=demo")
    # A config file that sets a path but keeps the demo dataset: the same contradiction.
    text = f"defaults: [train, _self_]\ndata:\n  gt_path: {data[0]}\n"
    one_error_line(train_cli([*config_dir(tmp_path, text), "dry_run=true"], tmp_path), "dataset is demo",
                   "data=paired")


# --------------------------------------------------------------------------- 2. keys set by the user


def test_keys_set_in_a_config_file_or_the_api_yaml_are_set_by_the_user(tmp_path, data):
    text = "defaults: [train, _self_]\ntrain:\n  batch_size: 3\n  total_iter: 123\n"
    out = train_cli([*config_dir(tmp_path, text), "dry_run=true", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert out.returncode == 0, out.stderr
    mine = next(line for line in out.stdout.splitlines() if line.startswith("set by you"))
    assert "train.batch_size=3" in mine and "train.total_iter=123" in mine
    assert "train.val_freq" not in mine  # derived from the run length, not set

    env = {**os.environ, "ZEROSR_FAKE_HARDWARE": ""}
    code = ("import json, sys, yaml; from zerosr import create_zero_config_training as c; "
            f"yaml.safe_dump(c('paragonsr2_nano', {str(data[0])!r}, {str(data[1])!r}, "
            "custom_overrides=json.loads(sys.argv[1])), open(sys.argv[2], 'w'))")
    derived_batch = None
    for name in ("plain", "batch", "same"):
        overrides = {"data": {"n_val": 2}, "train": {"lq_size": 16}}
        if name != "plain":  # "same": the batch the API derives, given by the caller
            overrides["train"]["batch_size"] = 3 if name == "batch" else derived_batch
        folder = tmp_path / f"api_{name}"
        folder.mkdir()
        subprocess.run([sys.executable, "-c", code, json.dumps(overrides), str(folder / "auto.yaml")], check=True, env=env,
                       cwd=tmp_path, capture_output=True, timeout=120)
        if name == "plain":
            derived_batch = yaml.safe_load((folder / "auto.yaml").read_text())["train"]["batch_size"]
        out = train_cli(["--config-dir", folder, "--config-name", "auto", "dry_run=true",
                         f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert out.returncode == 0, out.stderr
        mine = next(line for line in out.stdout.splitlines() if line.startswith("set by you"))
        assert "train.lq_size=16" in mine and "data.n_val=2" in mine
        # The API's YAML writes the derived batch out; only a batch the caller gave counts as set.
        assert (f"train.batch_size={overrides['train'].get('batch_size')}" in mine) == (name != "plain"), mine
        # Replayed, a run's resolved_config.yaml keeps the same keys set (a value derived from them is not one).
        replay = train_cli(["--config-dir", tmp_path / name, "--config-name", "resolved_config", "dry_run=true",
                            f"hydra.run.dir={tmp_path / (name + '_replay')}"], tmp_path)
        assert replay.returncode == 0, replay.stderr
        assert next(line for line in replay.stdout.splitlines() if line.startswith("set by you")) == mine


def test_a_batch_set_in_a_config_file_turns_the_start_up_search_off(data, tmp_path):
    searched, derived_batch = {}, None
    for name in ("derived", "fixed", "same"):
        # "same": the file writes the batch the run would derive; written, it is the user's all the same.
        batch = {"derived": "", "fixed": "batch_size: 3, ", "same": f"batch_size: {derived_batch}, "}[name]
        text = ("defaults: [train, {override data: paired}, _self_]\n"
                f"data: {{gt_path: {data[0]}, lq_path: {data[1]}, n_val: 2}}\n"
                f"train: {{{batch}total_iter: 2, lq_size: 16, val_freq: 2, save_freq: 2, log_freq: 1, warmup_iter: 0}}\n"
                "hardware_tier: {num_workers: 0}\nautomation: {dataset_analysis: {enabled: false}}\n")
        run_dir = tmp_path / name
        out = train_cli([*config_dir(tmp_path, text), f"hydra.run.dir={run_dir}"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        log = [json.loads(line) for line in (run_dir / "automation.jsonl").read_text().splitlines()]
        searched[name] = [r for r in log if r["automation"] == "batch" and "start-up search" in r["reason"]]
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if name == "derived":
            derived_batch = saved(run_dir)["train"]["batch_size"]
        else:
            expected = 3 if name == "fixed" else derived_batch
            assert {r["batch_size"] for r in steps if "batch_size" in r} == {expected}
    assert len(searched["derived"]) == 1 and searched["fixed"] == [] and searched["same"] == []


# --------------------------------------------------------------------------- 3. unknown keys and options


def test_keys_added_with_plus_are_refused_unless_the_node_takes_any(tmp_path):
    one_error_line(train_cli(["+train.foo=1", "dry_run=true"], tmp_path), "train.foo is not a config key")
    one_error_line(doctor_cli(["+automation.lr.speed=2"]), "automation.lr.speed is not a config key")
    # The optimizer's arguments are free-form: a real AdamW argument added with + is fine.
    out = train_cli(["+train.optimizer.amsgrad=true", "dry_run=true", f"hydra.run.dir={tmp_path / 'ok'}"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert saved(tmp_path / "ok")["train"]["optimizer"]["amsgrad"] is True


def test_a_misspelt_hparams_search_option_is_an_error(tmp_path):
    out = train_cli(["-m", "hparams_search=optuan", "dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                    tmp_path)
    one_error_line(out, "hparams_search=optuan is not an option", "optuna")
    assert not (tmp_path / "sweep").exists()


# --------------------------------------------------------------------------- 4. config-file errors


def test_yaml_syntax_error_in_a_config_file_names_file_line_and_column(tmp_path):
    args = config_dir(tmp_path, "defaults:\n  - train\n  - _self_\ntrain:\n  total_iter: [1,\n")
    one_error_line(train_cli([*args, "dry_run=true"], tmp_path), "exp.yaml, line 6, column 1", "YAML syntax")


def test_key_typo_in_a_config_file_keeps_the_key_name(tmp_path):
    args = config_dir(tmp_path, "defaults:\n  - train\n  - _self_\ntrain:\n  total_itr: 5\n")
    one_error_line(train_cli([*args, "dry_run=true"], tmp_path), "train.total_itr is not a config key", "'exp'")


# --------------------------------------------------------------------------- 5. dry run and explanation


def test_dry_run_runs_the_doctors_checks(tmp_path):
    out = train_cli(["data.gt_path=/nope", "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert any("'/nope' does not exist" in line for line in errors), out.stderr
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()


def test_the_screen_says_which_automations_run_and_the_lr_that_runs(tmp_path):
    off = train_cli(["automation=off", "dry_run=true", f"hydra.run.dir={tmp_path / 'off'}"], tmp_path)
    assert off.returncode == 0, off.stderr
    assert "automation   off: lr, batch, clip, early stop, loss schedule, dataset analysis" in off.stdout
    assert "plateau patience" not in off.stdout and "p90" not in off.stdout
    one = train_cli(["automation=off", "automation.clip.enabled=true", "train.lr_scale=0.5", "dry_run=true",
                     f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert "automation   clip: p90.0" in one.stdout and "plateau patience" not in one.stdout
    assert "lr 0.002 = 0.004 x train.lr_scale 0.5" in one.stdout


# --------------------------------------------------------------------------- 6. config checks


@pytest.mark.parametrize("tool, override, words", [
    ("train", "train.losses.0.weight=-1", ["train.losses.0.weight=-1", "0 or more"]),
    ("doctor", "train.losses.0.weight=lots", ["train.losses.0.weight=lots"]),
    ("train", "train.losses=[charbonnier]", ["train.losses.0=charbonnier is not a loss entry", "_target_"]),
    ("doctor", "train.losses.0._target_=zerosr.losses.Charbonier", ["zerosr.losses.Charbonier cannot be imported"]),
    ("train", "train.losses.0._target_=torch.optim.AdamW", ["is not a loss module"]),
    ("doctor", "train.optimizer._target_=torch.optim.Adamm", ["train.optimizer._target_=torch.optim.Adamm",
                                                              "cannot be imported"]),
    ("train", "train.optimizer._target_=zerosr.losses.L1Loss", ["is not a torch optimizer"]),
    ("doctor", "train.losses=[{_target_: zerosr.losses.GANLoss, weight: 0.1, discriminator: "
               "{_target_: zerosr.losses.NoSuchNet}}]", ["train.losses.0.discriminator._target_"]),
    ("train", "hardware_tier.prefetch_factor=0", ["hardware_tier.prefetch_factor=0 must be at least 1"]),
])
def test_config_checks_are_one_line_before_the_screen(tool, override, words, tmp_path):
    args = [override, "hardware_tier.num_workers=2"]
    out = (train_cli([*args, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path) if tool == "train"
           else doctor_cli(args))
    one_error_line(out, *words)
    assert "hardware     " not in out.stdout  # stopped before the start-up screen


# --------------------------------------------------------------------------- 7. the tier of the machine that trains


def test_the_tier_is_decided_where_the_job_runs(tmp_path):
    node = tmp_path / "node.json"
    node.write_text(json.dumps(RTX_3090))
    sweep = tmp_path / "sweep"
    # The test launcher composes each job here (no GPU: cpu tier), then runs it as on a 3090 node.
    out = train_cli(["-m", "hydra/launcher=other_machine", "dry_run=true", f"hydra.sweep.dir={sweep}"], tmp_path,
                    env={"ZEROSR_JOB_FAKE_HARDWARE": str(node)})
    assert out.returncode == 0, out.stderr[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/resolved_config.yaml")]
    tier = saved(job)["hardware_tier"]
    assert (tier["name"], tier["precision"], tier["compile"]) == ("high_end", "bf16", True)
    assert saved(job)["train"]["batch_size"] == 32  # derived from the node's tier
    record = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())
    assert record["hydra"]["runtime"]["choices"]["hardware_tier"] == "high_end"
    assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["hardware_tier"]["name"] == "high_end"
    # A plain run: the saved choice names the detected tier, not `auto`.
    plain = train_cli(["dry_run=true", f"hydra.run.dir={tmp_path / 'plain'}"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    record = yaml.safe_load((tmp_path / "plain" / ".hydra" / "hydra.yaml").read_text())
    assert record["hydra"]["runtime"]["choices"]["hardware_tier"] == "cpu"


# --------------------------------------------------------------------------- 8. Hydra's Compose API


def test_hydras_compose_api_works_on_zerosrs_conf():
    code = ("import sys\nimport zerosr\nfrom hydra import compose, initialize_config_dir\n"
            "from omegaconf import OmegaConf\nfrom zerosr.config import CONFIG_DIR\n"
            "with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['arch=paragonsr2_s'])\n"
            "plain = OmegaConf.to_container(cfg, resolve=True)\n"
            "print(plain['arch']['name'], plain['hardware_tier']['name'], plain['train']['batch_size'], "
            "'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "ZEROSR_FAKE_HARDWARE": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["paragonsr2_s", "cpu", "4", "False"]
