"""`src.push`: metadata checks, credentials, kaggle's own offline metadata check, and the call order.

Nothing here reaches Kaggle: `_run` (the only place that starts the kaggle CLI) is replaced for every
test, and `validate_with_kaggle_cli` runs kaggle in a subprocess with sockets disabled.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from src import push as push_module
from src.push import PushError, push, validate_with_kaggle_cli

KERNEL_META = {"id": "tester/birdclef-2025-demo", "title": "BirdCLEF 2025 demo", "code_file": "infer.py",
               "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False,
               "enable_tpu": False, "enable_internet": False, "dataset_sources": ["tester/birdclef-demo-weights"],
               "competition_sources": ["birdclef-2025"], "kernel_sources": [], "model_sources": []}
DATASET_META = {"title": "BirdCLEF demo weights", "id": "tester/birdclef-demo-weights",
                "licenses": [{"name": "CC0-1.0"}]}
CREDENTIAL_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")


def make_kernel(root: Path, **kernel_changes) -> Path:
    """`root/kernels/demo/{kernel,dataset}` as `python -m src.kernel build` writes them; returns kernels/demo."""
    kernel_root = root / "kernels" / "demo"
    (kernel_root / "kernel").mkdir(parents=True)
    (kernel_root / "dataset").mkdir()
    (kernel_root / "kernel" / "infer.py").write_text("print('row_id')\n")
    (kernel_root / "kernel" / "kernel-metadata.json").write_text(json.dumps(KERNEL_META | kernel_changes))
    (kernel_root / "dataset" / "ensemble.json").write_text("{}")
    (kernel_root / "dataset" / "dataset-metadata.json").write_text(json.dumps(DATASET_META))
    return kernel_root


@pytest.fixture(autouse=True)
def no_credentials(tmp_path, monkeypatch):
    """An empty HOME, no KAGGLE_* credentials, and a kaggle CLI runner that fails the test if called."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)

    def forbidden(cmd, echo=True):
        raise AssertionError(f"test tried to run {cmd}")

    monkeypatch.setattr(push_module, "_run", forbidden)
    return home


@pytest.fixture
def fake_kaggle(monkeypatch):
    """Dummy credentials, kaggle's check skipped, and a `_run` that records calls; `existing` sets whether
    the dataset is already on Kaggle and `fail` the call that prints kaggle's error line."""
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(push_module, "validate_with_kaggle_cli", lambda kernel_dir, settings=None: None)
    state = {"calls": [], "existing": False, "fail": None}

    def run(cmd, echo=True):
        state["calls"].append(cmd)
        if cmd[1:3] == ["datasets", "status"]:
            exists = state["existing"] or any(c[1:3] == ["datasets", "create"] for c in state["calls"])
            return (0, "ready\n") if exists else (1, "404 Client Error: Not Found for url: ...\n")
        if cmd[1:3] == state["fail"]:
            return 0, "Dataset creation error: The requested title is already in use\n"
        return 0, "ok\n"

    monkeypatch.setattr(push_module, "_run", run)
    return state


def test_dry_run_prints_create_and_push_without_credentials(tmp_path, capsys):
    kernel_root = make_kernel(tmp_path)
    calls = push(kernel_root, dry_run=True)
    dataset_dir, kernel_dir = str(kernel_root / "dataset"), str(kernel_root / "kernel")
    assert calls == [["kaggle", "datasets", "create", "-p", dataset_dir, "--dir-mode", "zip"],
                     ["kaggle", "kernels", "push", "-p", kernel_dir]]
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"kaggle datasets create -p {dataset_dir} --dir-mode zip",
                       f"kaggle kernels push -p {kernel_dir}"]
    assert "kaggle datasets version" in out[0] and "tester/birdclef-demo-weights" in out[0]


def test_dry_run_only_warns_about_bad_metadata(tmp_path, caplog):
    kernel_root = make_kernel(tmp_path, enable_internet=True)
    with caplog.at_level(logging.WARNING, logger="src.push"):
        assert len(push(kernel_root, dry_run=True)) == 2
    assert "enable_internet" in caplog.text


def test_real_mode_without_credentials_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "empty"))
    with pytest.raises(PushError) as err:
        push(make_kernel(tmp_path), message="v2")
    assert "\n" not in str(err.value)
    assert "KAGGLE_USERNAME" in str(err.value) and "kaggle.json" in str(err.value)


def test_malformed_kaggle_json_is_named(tmp_path, no_credentials):
    (no_credentials / ".kaggle").mkdir()
    (no_credentials / ".kaggle" / "kaggle.json").write_text('{"username": "tester"')
    with pytest.raises(PushError, match=r"malformed .*kaggle\.json") as err:
        push(make_kernel(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, named", [({"enable_internet": True}, "enable_internet"),
                                           ({"enable_gpu": True}, "enable_gpu"),
                                           ({"dataset_sources": []}, "dataset_sources")])
def test_rule_breaking_metadata_names_the_file(tmp_path, change, named):
    with pytest.raises(PushError) as err:
        push(make_kernel(tmp_path, **change))
    assert "kernel-metadata.json" in str(err.value) and named in str(err.value)


def test_missing_internet_key_is_an_error(tmp_path):
    kernel_root = make_kernel(tmp_path)
    meta_file = kernel_root / "kernel" / "kernel-metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["enable_internet"]  # kaggle would push with internet on
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(PushError, match=r"kernel-metadata\.json: \"enable_internet\" is missing"):
        push(kernel_root)


def test_invalid_dataset_json_names_the_file(tmp_path):
    kernel_root = make_kernel(tmp_path)
    (kernel_root / "dataset" / "dataset-metadata.json").write_text("{not json")
    with pytest.raises(PushError, match=r"dataset-metadata\.json: not valid JSON"):
        push(kernel_root)


def test_kaggle_check_accepts_the_built_metadata(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="src.push"):
        validate_with_kaggle_cli(make_kernel(tmp_path) / "kernel")
    assert caplog.text == ""


@pytest.mark.parametrize("change, message", [({"id": "tester/demo"}, "Kernel slug must be at least five"),
                                             ({"language": "julia"}, "A valid language must be specified")])
def test_kaggle_check_rejects_what_kaggle_rejects(tmp_path, change, message):
    with pytest.raises(PushError, match=message):
        validate_with_kaggle_cli(make_kernel(tmp_path, **change) / "kernel")


def test_kaggle_only_warns_when_title_does_not_match_id(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="src.push"):
        validate_with_kaggle_cli(make_kernel(tmp_path, title="Something else entirely") / "kernel")
    assert "does not resolve to the specified id" in caplog.text


def test_real_mode_creates_new_dataset_then_pushes_kernel(tmp_path, fake_kaggle):
    kernel_root = make_kernel(tmp_path)
    calls = push(kernel_root, message="v1")
    create = ["kaggle", "datasets", "create", "-p", str(kernel_root / "dataset"), "--dir-mode", "zip"]
    kernel_push = ["kaggle", "kernels", "push", "-p", str(kernel_root / "kernel")]
    status = ["kaggle", "datasets", "status", "tester/birdclef-demo-weights"]
    assert calls == [create, kernel_push]
    assert fake_kaggle["calls"] == [status, create, status, kernel_push]


def test_real_mode_versions_an_existing_dataset(tmp_path, fake_kaggle):
    fake_kaggle["existing"] = True
    kernel_root = make_kernel(tmp_path)
    calls = push(kernel_root, message="fold 0-4 effnet")
    assert calls[0] == ["kaggle", "datasets", "version", "-p", str(kernel_root / "dataset"),
                        "-m", "fold 0-4 effnet", "--dir-mode", "zip"]
    assert [c[1:3] for c in fake_kaggle["calls"]] == [["datasets", "status"], ["datasets", "version"],
                                                     ["datasets", "status"], ["kernels", "push"]]


def test_real_mode_stops_at_first_failure(tmp_path, fake_kaggle):
    fake_kaggle["fail"] = ["datasets", "create"]  # kaggle prints the error and still exits 0
    with pytest.raises(PushError, match="Dataset creation error"):
        push(make_kernel(tmp_path))
    assert ["kernels", "push"] not in [c[1:3] for c in fake_kaggle["calls"]]


def test_placeholder_user_is_flagged_in_the_dry_run_and_stops_the_push(tmp_path, caplog, monkeypatch):
    """A kernel built without a Kaggle user carries `your-kaggle-username` (issue 10, item 8)."""
    kernel_root = make_kernel(tmp_path, id="your-kaggle-username/birdclef-2025-demo",
                              dataset_sources=["your-kaggle-username/birdclef-demo-weights"])
    dataset_meta = kernel_root / "dataset" / "dataset-metadata.json"
    dataset_meta.write_text(json.dumps(DATASET_META | {"id": "your-kaggle-username/birdclef-demo-weights"}))
    with caplog.at_level(logging.WARNING, logger="src.push"):
        push(kernel_root, dry_run=True)
    placeholder = [r.getMessage() for r in caplog.records if "placeholder user" in r.getMessage()]
    assert len(placeholder) == 2 and "user=<your Kaggle username>" in placeholder[0]
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    with pytest.raises(PushError, match="placeholder user"):
        push(kernel_root)


def test_dry_run_warns_when_the_ids_are_not_kaggle_usernames(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(push_module, "validate_with_kaggle_cli", lambda kernel_dir, settings=None: None)
    with caplog.at_level(logging.WARNING, logger="src.push"):
        push(make_kernel(tmp_path), dry_run=True)
    assert "tester/birdclef-2025-demo, tester/birdclef-demo-weights belong(s) to another user than the " \
           "credentials' 'someone'" in caplog.text and "user=someone" in caplog.text


def test_a_network_failure_looking_up_the_dataset_stops_before_create(tmp_path, fake_kaggle, monkeypatch):
    """`datasets status` failing on the network is not "the dataset is absent": no `datasets create`."""
    calls = []

    def offline(cmd, echo=True):
        calls.append(cmd)
        return 1, "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='www.kaggle.com'): Max retries\n"

    monkeypatch.setattr(push_module, "_run", offline)
    with pytest.raises(PushError, match=r"datasets status tester/birdclef-demo-weights` failed .*ConnectionError.*"
                                        r"nothing was uploaded"):
        push(make_kernel(tmp_path))
    assert [c[1:3] for c in calls] == [["datasets", "status"]]
