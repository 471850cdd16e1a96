"""The command line as a user meets it, through the real entry point (``python -m vaeflow``) in a
subprocess: errors of one line that leave nothing behind, exit codes, usage, -v/-q, --json, ls,
closed pipes, progress bars only where seen, and what a rerun or a store inside its source does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ..helpers import S3Bucket, image_folder

USAGE, ERROR, PARTIAL = 2, 1, 3


def vaeflow(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "VAEFLOW_PROGRESS"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "vaeflow", *args], capture_output=True, text=True, timeout=600, env=environ, cwd=cwd
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error message, checked to be one line without a traceback or an errno."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "dashboard at" not in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "[Errno" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Two small real photos."""
    return image_folder(tmp_path_factory.mktemp("cli"), photos[:2], 64, 96)


@pytest.fixture(scope="module")
def store(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "s.zarr"
    done = vaeflow("compress", str(source), str(out), "--scheduler", "sync")
    assert done.returncode == 0, done.stderr
    return out


def test_samples_write_the_photos_and_refuse_to_replace_them(tmp_path: Path) -> None:
    done = vaeflow("samples", str(tmp_path / "samples"))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == sorted(f"{n}.png" for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                                 "retina", "immunohistochemistry"))  # fmt: skip
    assert "vaeflow compress" in done.stderr  # what to do next
    again = vaeflow("samples", str(tmp_path / "samples"), "--names", "coffee")
    assert again.returncode == ERROR and "--overwrite" in one_error_line(again)
    assert vaeflow("samples", str(tmp_path / "samples"), "--names", "coffee", "--overwrite", "-q").returncode == 0
    typo = vaeflow("samples", str(tmp_path / "x"), "--names", "cofee")
    assert (
        typo.returncode == USAGE and "usage: vaeflow samples" in typo.stderr and "did you mean 'coffee'" in typo.stderr
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "option",
    [
        ["--workers", "0"],
        ["--memory-limit", "lots"],
        ["--quality", "0"],
        ["--batch-size", "0"],
        ["--scheduler", "bogus"],
        ["--threads-per-worker", "0"],
        ["--target-bpp", "-1"],
    ],
    ids=lambda o: " ".join(o),
)
def test_bad_values_are_usage_errors_that_create_nothing(option: list[str], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    done = vaeflow("compress", str(source), str(out), *option)
    assert done.returncode == USAGE
    assert done.stderr.startswith("usage: vaeflow compress") and f"argument {option[0]}" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["--pipeline", "nosuch"], "'nosuch'"),
        (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach a Dask scheduler"),
    ],
    ids=["model", "pipeline", "scheduler"],
)
def test_failed_settings_leave_no_store_behind(option: list[str], says: str, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    done = vaeflow("compress", str(source), str(out), *option)
    assert done.returncode == ERROR and says in one_error_line(done)
    assert not out.exists()


def test_paths_that_do_not_fit_are_refused_with_a_hint(source: Path, tmp_path: Path) -> None:
    missing = vaeflow("compress", str(tmp_path / "nonexistent.png"), str(tmp_path / "o.vfl"))
    assert missing.returncode == ERROR and "nonexistent.png does not exist" in one_error_line(missing)
    assert not (tmp_path / "o.vfl").exists()
    image = source / "0.png"
    to_store = vaeflow("compress", str(image), str(tmp_path / "new.zarr"))
    assert to_store.returncode == ERROR and ".vfl" in one_error_line(to_store)
    assert not (tmp_path / "new.zarr").exists()
    to_folder = vaeflow("compress", str(image), str(tmp_path))
    assert to_folder.returncode == ERROR and "is a folder" in one_error_line(to_folder)
    folder_to_stream = vaeflow("compress", str(source), str(tmp_path / "o.vfl"))
    assert folder_to_stream.returncode == ERROR and "OUT.zarr" in one_error_line(folder_to_stream)
    assert not (tmp_path / "o.vfl").exists()
    no_output = vaeflow("compress", str(source))
    assert no_output.returncode == USAGE and no_output.stderr.startswith("usage: vaeflow compress")


def test_a_store_url_after_the_options_stays_a_url(source: Path, tmp_path: Path, s3: S3Bucket) -> None:
    """``compress SRC --opt s3://...``: the late output path is parsed as its argument is (a string),
    so the plan writes the URL's local staging copy, never a folder named ``s3:``."""
    url = f"s3://{s3.name}/x.zarr"
    flags = s3.cli_options
    late = vaeflow("compress", str(source), "--quality", "5", url, "--dry-run", *flags, cwd=tmp_path)
    early = vaeflow("compress", str(source), url, "--quality", "5", "--dry-run", *flags, cwd=tmp_path)
    assert late.returncode == 0, late.stderr
    assert late.stdout.splitlines()[0] == early.stdout.splitlines()[0]
    assert "staging" in late.stdout.splitlines()[0] and not (tmp_path / "s3:").exists()


def test_one_image_round_trip_refuses_to_replace_files(source: Path, tmp_path: Path) -> None:
    stream, png = tmp_path / "a.vfl", tmp_path / "a.png"
    first = vaeflow("compress", str(source / "0.png"), str(stream), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["bytes"] == stream.stat().st_size
    assert vaeflow("compress", str(source / "0.png"), str(stream)).returncode == ERROR
    assert vaeflow("decompress", str(stream), str(png)).returncode == 0
    again = vaeflow("decompress", str(stream), str(png))
    assert again.returncode == ERROR and "--overwrite" in one_error_line(again)
    assert vaeflow("decompress", str(stream), str(png), "--overwrite").returncode == 0


def test_errors_about_stores_are_one_clear_line(source: Path, tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "nothere"): "does not exist",
        str(source): "is not a vaeflow store",
        str(source / "0.png"): "is a file, not a store",
    }
    for path, says in cases.items():
        for command in ("ls", "verify"):
            done = vaeflow(command, path)
            assert done.returncode == ERROR and says in one_error_line(done), (command, path)
    unfinished = tmp_path / "unfinished.zarr"
    unfinished.mkdir()
    (unfinished / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    done = vaeflow("ls", str(unfinished))
    assert "not a finished vaeflow store" in one_error_line(done) and "Consolidated" not in done.stderr
    info = vaeflow("info", str(tmp_path / "nothere.vfl"))
    assert info.returncode == ERROR and "does not exist" in one_error_line(info)


def test_tracebacks_come_only_with_verbose(tmp_path: Path) -> None:
    quiet = vaeflow("ls", str(tmp_path / "nothere"))
    assert "Traceback" not in quiet.stderr
    for args in (["-v", "ls", str(tmp_path / "nothere")], ["ls", str(tmp_path / "nothere"), "-v"]):
        loud = vaeflow(*args)
        assert loud.returncode == ERROR and "Traceback" in loud.stderr and "does not exist" in loud.stderr


def test_quiet_and_verbose_go_before_or_after_the_subcommand(tmp_path: Path) -> None:
    for i, args in enumerate((["-q", "samples"], ["samples", "-q"])):
        done = vaeflow(*args, str(tmp_path / str(i)), "--names", "coffee")
        assert done.returncode == 0 and done.stderr == "" and done.stdout.strip().endswith("coffee.png")
    assert vaeflow("samples", str(tmp_path / "v"), "--names", "coffee", "-v").returncode == 0


def test_typos_get_the_right_usage_and_a_suggestion() -> None:
    top = vaeflow("compres")
    assert top.returncode == USAGE and "did you mean 'compress'" in top.stderr
    sub = vaeflow("models", "lst")
    assert sub.returncode == USAGE and sub.stderr.startswith("usage: vaeflow models") and "'list'" in sub.stderr
    unknown = vaeflow("ls", "x.zarr", "--nosuch")
    assert unknown.returncode == USAGE and unknown.stderr.startswith("usage: vaeflow ls")


def test_help_shows_defaults_and_the_exit_codes() -> None:
    done = vaeflow("compress", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: 8)" in text and "(default: auto)" in text and "exit codes:" in text and "3 partial" in text
    assert "exit codes:" in vaeflow("--help").stdout


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    from vaeflow.cli.main import build_parser
    from vaeflow.cli.parsing import subparsers

    parser = build_parser()
    missing = [
        f"{sub.prog} {'/'.join(action.option_strings) or action.dest}"
        for sub in [parser, *subparsers(parser)]
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and action.help != argparse.SUPPRESS and not action.help
    ]
    assert not missing, missing


def test_an_optional_output_may_follow_the_options(source: Path, tmp_path: Path) -> None:
    done = vaeflow("compress", str(source), "--dry-run", "--batch-size", "1", str(tmp_path / "late.zarr"))
    assert done.returncode == 0, done.stderr
    assert "late.zarr" in done.stdout and not (tmp_path / "late.zarr").exists()


def test_json_output_of_compress_ls_info_and_verify(source: Path, store: Path, tmp_path: Path) -> None:
    job = vaeflow("compress", str(source), str(tmp_path / "j.zarr"), "--scheduler", "sync", "--json")
    assert job.returncode == 0, job.stderr
    report = json.loads(job.stdout)
    assert report["stored"] == 2 and report["failed"] == 0 and report["ok"] is True and "spans" not in report
    rows = json.loads(vaeflow("ls", str(store), "--json").stdout)
    assert [r["name"] for r in rows] == ["0.png", "1.png"] and rows[0]["width"] == 96
    assert json.loads(vaeflow("ls", str(store), "--failed", "--json").stdout) == {"failed": [], "skipped": []}
    assert json.loads(vaeflow("info", str(store), "--json").stdout)["images"] == 2
    checked = json.loads(vaeflow("verify", str(store), "--json").stdout)
    assert checked["ok"] is True and checked["checked"] == 2 and checked["damaged"] == []
    plain = vaeflow("info", str(store)).stdout
    assert "images: 2" in plain


def test_ls_has_a_header_and_escapes_awkward_names(photos: list[np.ndarray], tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    names = ["tab\there.png", "new\nline.png", "back\\slash.png"]
    for name, image in zip(names, photos, strict=False):
        Image.fromarray(image[:64, :96]).save(src / name)
    out = tmp_path / "awkward.zarr"
    assert vaeflow("compress", str(src), str(out), "--scheduler", "sync", "-q").returncode == 0
    lines = vaeflow("ls", str(out)).stdout.splitlines()
    assert lines[0] == "name\tsize\tbytes\tbpp" and len(lines) == 4
    assert sorted(line.split("\t")[0] for line in lines[1:]) == sorted(["tab\\there.png", "new\\nline.png",
                                                                         "back\\\\slash.png"])  # fmt: skip
    assert all(len(line.split("\t")) == 4 for line in lines)
    assert sorted(r["name"] for r in json.loads(vaeflow("ls", str(out), "--json").stdout)) == sorted(names)


def test_a_closed_pipe_ends_quietly(store: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "vaeflow", "ls", str(store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does once it has what it wants
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_progress_bars_only_where_someone_watches(source: Path, tmp_path: Path) -> None:
    logged = vaeflow("compress", str(source), str(tmp_path / "a.zarr"), "--scheduler", "sync")
    assert logged.returncode == 0 and "img/s" not in logged.stderr and "%|" not in logged.stderr
    shown = vaeflow("compress", str(source), str(tmp_path / "b.zarr"), "--scheduler", "sync",
                    env={"VAEFLOW_PROGRESS": "1"})  # fmt: skip
    assert shown.returncode == 0 and "compress: 100%" in shown.stderr and "img/s" in shown.stderr


def test_a_rerun_of_a_finished_store_starts_no_cluster(source: Path, store: Path) -> None:
    # an unreachable scheduler: a rerun that tried to connect would fail after its timeout
    done = vaeflow("compress", str(source), str(store), "--scheduler", "tcp://127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    assert "nothing new to code" in done.stdout and "dashboard" not in done.stderr


def test_a_store_inside_its_source_is_not_scanned_by_the_next_job(photos: list[np.ndarray], tmp_path: Path) -> None:
    src = image_folder(tmp_path, photos[:2], 64, 96)
    first = vaeflow("compress", str(src), str(src / "inner.zarr"), "--scheduler", "sync", "--json")
    assert json.loads(first.stdout)["stored"] == 2
    second = vaeflow("compress", str(src), str(src / "second.zarr"), "--scheduler", "sync", "--json")
    assert json.loads(second.stdout)["stored"] == 2
    skipped = json.loads(vaeflow("ls", str(src / "second.zarr"), "--failed", "--json").stdout)["skipped"]
    assert skipped == [{"path": "inner.zarr", "reason": "a vaeflow store (not scanned)"}]
    names = [r["name"] for r in json.loads(vaeflow("ls", str(src / "second.zarr"), "--json").stdout)]
    assert names == ["0.png", "1.png"]


def test_eval_shows_progress_and_refuses_a_missing_baseline_library(source: Path, tmp_path: Path) -> None:
    args = ["--qualities", "30,60", "--baselines", "jpeg,jp2", "--baseline-qualities", "10,50", "--scheduler", "sync"]
    done = vaeflow("eval", str(source), *args, "--out", str(tmp_path / "e"), env={"VAEFLOW_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert "eval" in done.stderr and "6/6" in done.stderr  # 2 images through vaeflow, JPEG and JPEG 2000
    table = (tmp_path / "e" / "bd_rate.txt").read_text()
    assert "JPEG 2000" in table and "-10 log10(1 - MS-SSIM)" in table and "Integrated over" in table
    bad = vaeflow("eval", str(source), "--baselines", "gif", "--out", str(tmp_path / "f"))
    assert bad.returncode == ERROR and "unknown baseline 'gif'" in one_error_line(bad)
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("stages", "size"), [("--fuse-stages", "32k"), ("--no-fuse-stages", "256k")])
def test_a_full_disk_is_one_line_without_worker_tracebacks(
    photos: list[np.ndarray], tmp_path: Path, stages: str, size: str
) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        src = image_folder(tmp_path, [np.tile(p, (2, 2, 1)) for p in photos], 512, 768)
        done = vaeflow("compress", str(src), str(mount / "s.zarr"), "--workers", "2", "--batch-size", "1", stages)
        assert done.returncode == ERROR
        line = one_error_line(done)
        assert "no space left on device" in line.lower() and "run the same command again" in line
    finally:
        subprocess.run(["umount", str(mount)], check=False)
