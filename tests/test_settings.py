"""Server settings: where the port, model directory and limits come from, and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_code import serve
from model_code.serve import main
from model_code.settings import Settings, SettingsError


def test_defaults_are_sagemakers() -> None:
    settings = Settings.load({})
    assert settings.model_dir == Path("/opt/ml/model") and settings.port == 8080
    assert settings.max_body_bytes == 6 * 1024 * 1024 and settings.max_batch_size == 32


def test_port_precedence() -> None:
    assert Settings.load({"SAGEMAKER_BIND_TO_PORT": "9000"}).port == 9000
    assert Settings.load({"SAGEMAKER_BIND_TO_PORT": "9000"}, port=9100).port == 9100
    assert Settings.load({}, model_dir=Path("/models")).model_dir == Path("/models")


def test_body_limit_follows_batch_transform_then_our_variable() -> None:
    assert Settings.load({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"}).max_body_bytes == 100 * 1024 * 1024
    both = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100", "MAX_BODY_MB": "20"}
    assert Settings.load(both).max_body_bytes == 20 * 1024 * 1024


def test_batching_variables() -> None:
    settings = Settings.load({"MAX_BATCH_SIZE": "1", "MAX_BATCH_WAIT_MS": "0"})
    assert (settings.max_batch_size, settings.max_batch_wait_ms) == (1, 0.0)


def test_the_production_server_has_no_simulation_knobs() -> None:
    """The simulated device is the benchmarks' (bench/simulated_device.py): the server's settings ignore it."""
    settings = Settings.load({"SIMULATED_FORWARD_MS": "20,1", "SIMULATED_POISON_SLIDE": "x"})
    assert settings == Settings.load({}) and not any("simulated" in name for name in vars(settings))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE='0' must be at least 1"),
        ({"MAX_BATCH_SIZE": "lots"}, "MAX_BATCH_SIZE='lots' is not a number"),
        ({"MAX_BATCH_WAIT_MS": "-1"}, "MAX_BATCH_WAIT_MS='-1' must be at least 0"),
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT='http' is not a number"),
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.load(env)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [("MAX_BATCH_SIZE", "-3", "MAX_BATCH_SIZE='-3' must be at least 1"), ("MAX_SLIDE_MB", "lots", "is not a number")],
)
def test_serve_exits_2_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["--model-dir", "/nowhere"]) == 2
    err = capsys.readouterr().err
    assert reason in err and name in err


@pytest.mark.parametrize(("omp", "device", "expected"), [(None, "cpu", [1]), ("2", "cpu", []), (None, "cuda", [])])
def test_cpu_forward_takes_half_the_cores_unless_told(
    monkeypatch: pytest.MonkeyPatch, omp: str | None, device: str, expected: list[int]
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(serve.torch, "set_num_threads", calls.append)
    monkeypatch.setattr(serve.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OPTIMUS_DEVICE", device)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    serve.share_cpu()
    assert calls == expected
