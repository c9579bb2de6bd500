"""The L1 + perceptual + GAN path as a real `train.py` process, judged by its selection metric.

Every pretrained file the run needs (VGG19 for the perceptual loss; AlexNet, VGG16, the LPIPS
heads and DISTS alpha/beta for validation) is made by the test, served on the loopback address
and reached through `ZEROSR_WEIGHTS_INDEX` (test hashes) and an empty `ZEROSR_CACHE`, so the run
downloads them as a first use on a machine with internet would.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from test_perceptual_metrics import backbone, dists_weights, lpips_heads
from test_scaling import ENV, train_py
from test_train import make_dataset, tiny_overrides
from zerosr.losses.perceptual import VGG19Features

LOSSES = ("[{_target_:zerosr.losses.L1Loss,weight:1.0},"
          "{_target_:zerosr.losses.PerceptualLoss,weight:0.1,layer_weights:{conv1_2:0.1,relu2_2:1.0}},"
          "{_target_:zerosr.losses.GANLoss,weight:0.05,discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:8}}]")
TOTAL, DELAY, VAL = 16, 8, 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(index file, hits): the five files on a loopback server, and the paths it was asked for."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    files = {
        "vgg19": VGG19Features("relu2_2").state_dict(),
        "vgg16": {k: v.half() for k, v in backbone("vgg16").items()},  # half: a smaller file, same layout
        "alexnet": backbone("alexnet"),
        "lpips_alex": lpips_heads("alex"),
        "dists": dists_weights(),
    }
    for name, state in files.items():
        torch.save(state, folder / f"{name}.pth")
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    index = {name: {"url": f"{url}/{name}.pth", "file_name": f"{name}-test.pth",
                    "sha256": hashlib.sha256((folder / f"{name}.pth").read_bytes()).hexdigest()} for name in files}
    index_path = folder / "index.json"
    index_path.write_text(json.dumps(index))
    yield index_path, hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def finished(served, tmp_path_factory):
    """One finished run: (run directory, stdout, its environment)."""
    index, hits = served
    root = tmp_path_factory.mktemp("gan_run")
    data = make_dataset(root / "data", count=6, size=64)
    env = {**ENV, "ZEROSR_WEIGHTS_INDEX": str(index), "ZEROSR_CACHE": str(root / "cache")}
    run_dir = root / "run"
    args = tiny_overrides(data, **{
        "automation": "auto", "automation.batch.enabled": False, "automation.dataset_analysis.batches": 2,
        "train.losses": LOSSES, "train.total_iter": TOTAL, "train.val_freq": VAL, "train.save_freq": VAL,
        "train.keep_checkpoints": 20, "train.lq_size": 16, "train.lr": 1e-2, "data.n_val": 2})
    args = [a for a in args if not a.startswith(("train.val_metrics=", "train.select_metric="))]  # derived here
    out = _run(args + [f"hydra.run.dir={run_dir}"], root, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(hits) == sorted(f"/{n}.pth" for n in ("vgg19", "vgg16", "alexnet", "lpips_alex", "dists"))
    return run_dir, out.stdout, env, args, root


def _run(args, cwd, env):
    import subprocess
    import sys

    from test_scaling import ROOT

    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_loss_moves_the_total_and_the_gan_joins_at_its_delay(finished):
    run_dir, stdout, *_ = finished
    assert f"joins after iteration {DELAY} of {TOTAL}" in stdout
    assert "select       dists (lower is better; derived: train.losses has GANLoss, PerceptualLoss" in stdout
    steps = [r for r in _records(run_dir / "metrics.jsonl") if "loss" in r and "skipped" not in r]
    assert [r["iter"] for r in steps] == list(range(1, TOTAL + 1))
    for record in steps:
        parts = {name: record[f"loss/{name}"] for name in ("l1", "perceptual", "gan") if f"loss/{name}" in record}
        assert ("gan" in parts) == (record["iter"] > DELAY), record  # the GAN joins after its delay
        # The schedule balances L1 and the perceptual term (it logs their weights); the GAN keeps its own.
        weights = {name: record.get(f"loss_weight/{name}", 0.05 if name == "gan" else None) for name in parts}
        assert record["loss"] == pytest.approx(sum(weights[n] * parts[n] for n in parts), rel=1e-4)
        for name in parts:  # each term is a visible share of what was backpropagated
            assert abs(weights[name] * parts[name]) > 1e-4 * abs(record["loss"]), (name, record)


def test_validation_reports_lpips_and_dists_for_model_and_bicubic(finished):
    run_dir, stdout, *_ = finished
    validations = [r for r in _records(run_dir / "metrics.jsonl") if "val/psnr" in r]
    assert [r["iter"] for r in validations] == list(range(VAL, TOTAL + 1, VAL))
    for record in validations:
        for name in ("psnr", "ssim", "lpips", "dists"):
            assert f"val/{name}" in record and f"val/bicubic_{name}" in record
    for plot in ("psnr", "ssim", "lpips", "dists"):
        assert (run_dir / "plots" / f"{plot}.png").is_file()
    assert "LPIPS" in stdout.split("=== zerosr run summary ===")[1] and "DISTS" in stdout


def test_best_checkpoint_is_chosen_by_dists_where_psnr_disagrees(finished):
    run_dir, stdout, *_ = finished
    validations = [r for r in _records(run_dir / "metrics.jsonl") if "val/dists" in r]
    by_dists = min(validations, key=lambda r: r["val/dists"])["iter"]
    by_psnr = max(validations, key=lambda r: r["val/psnr"])["iter"]
    assert by_dists != by_psnr  # the run this test pins: PSNR would have kept another checkpoint
    best = run_dir / "models" / "best.safetensors"
    with safe_open(str(best), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    assert meta["iteration"] == str(by_dists) and meta["select_metric"] == "dists"
    with safe_open(str(run_dir / "models" / f"net_g_ema_{by_dists:08d}.safetensors"), "pt") as f:
        assert all(torch.equal(tensors[k], f.get_tensor(k)) for k in f.keys())  # noqa: SIM118
    assert f"best         DISTS {min(r['val/dists'] for r in validations):.4f} at iteration {by_dists}" in stdout


def _snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "resolved_config.yaml"
            and ".hydra" not in p.parts and not p.name.endswith(".log") and "events.out" not in p.name}


def _one_error(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("case", ["hash_mismatch", "offline", "unwritable_cache"])
def test_weights_failures_are_one_line_and_the_run_is_kept(finished, served, tmp_path, case):
    """Resuming the finished run on a machine whose weights go wrong: one line, exit 2, the run intact."""
    run_dir, _, env, args, root = finished
    index = json.loads(served[0].read_text())
    env = {**env, "ZEROSR_CACHE": str(tmp_path / "cache")}  # first use again
    if case == "hash_mismatch":
        index["vgg19"]["sha256"] = "f" * 64
    elif case == "offline":
        index["vgg19"]["url"] = "http://127.0.0.1:9/vgg19.pth"  # the discard port: nothing listens
    else:
        (tmp_path / "a_file").write_text("")
        env["ZEROSR_CACHE"] = str(tmp_path / "a_file" / "weights")
    (tmp_path / "index.json").write_text(json.dumps(index))
    env["ZEROSR_WEIGHTS_INDEX"] = str(tmp_path / "index.json")
    before = _snapshot(run_dir)
    line = _one_error(_run(args + [f"hydra.run.dir={run_dir}", "train.resume=auto",
                                   f"train.total_iter={TOTAL + 4}"], root, env))
    expected = {"hash_mismatch": "SHA-256", "offline": "vgg19-test.pth", "unwritable_cache": "cannot write the weights cache"}
    assert expected[case] in line
    if case == "offline":
        assert "http://127.0.0.1:9/vgg19.pth" in line and str(tmp_path / "cache" / "vgg19-test.pth") in line
    if case == "hash_mismatch":
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("override, expected", [
    ("train.val_metrics=[psnr,ssim,lpipz]", "train.val_metrics: 'lpipz' is not a metric"),
    ("train.select_metric=fid", "train.select_metric=fid is not a metric"),
])
def test_unknown_metric_names_are_one_line(override, expected, tmp_path):
    out = train_py("dry_run=true", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert expected in _one_error(out)


def test_evaluate_reports_the_runs_metrics_per_image(finished):
    import subprocess
    import sys

    run_dir, _, env, args, root = finished
    hr, lr = (a.split("=", 1)[1] for a in args if a.startswith(("data.gt_path=", "data.lq_path=")))

    def evaluate(*extra):
        return subprocess.run([sys.executable, "-m", "zerosr.evaluate", str(run_dir), "--hr", hr, "--lr", lr, *extra],
                              cwd=root, capture_output=True, text=True, timeout=300, env=env)

    out = evaluate("--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert len(report["images"]) == 6
    for key in ("psnr", "ssim", "lpips", "dists", "bicubic_lpips", "bicubic_dists"):  # the run's val metrics
        assert all(isinstance(row[key], float) for row in report["images"])
        assert report["mean"][key] == pytest.approx(sum(r[key] for r in report["images"]) / 6)
    table = evaluate("--metrics", "psnr,ssim,lpips_vgg")
    assert table.returncode == 2 and "lpips_v0.1_vgg.pth" in table.stderr  # its heads are not served: one line
    assert "error: " in table.stderr and "Traceback" not in table.stderr
    wrong = evaluate("--metrics", "psnr,fid")
    assert wrong.returncode == 2 and "--metrics: 'fid' is not a metric" in wrong.stderr


def test_an_offline_machine_uses_the_weights_folder(finished, served, tmp_path):
    """No network, empty cache, the files in `train.weights_dir`: the run goes on without a download."""
    import shutil

    run_dir, _, env, args, root = finished
    index = json.loads(served[0].read_text())
    folder = tmp_path / "weights"
    folder.mkdir()
    for name, entry in index.items():
        shutil.copy(served[0].parent / f"{name}.pth", folder / entry["file_name"])
        entry["url"] = "http://127.0.0.1:9/" + entry["file_name"]  # nothing listens there
    (tmp_path / "index.json").write_text(json.dumps(index))
    env = {**env, "ZEROSR_WEIGHTS_INDEX": str(tmp_path / "index.json"), "ZEROSR_CACHE": str(tmp_path / "cache")}
    out = _run(args + [f"hydra.run.dir={tmp_path / 'run'}", f"train.weights_dir={folder}", "train.total_iter=2",
                       "train.val_freq=2", "train.save_freq=2"], root, env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "cache").exists()
    assert "val/dists" in (tmp_path / "run" / "metrics.jsonl").read_text()
