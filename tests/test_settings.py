import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parent.parent


def test_environment_overrides_file_and_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('partitions = 6\nupdates_topic = "u"\n[model]\ntau_s = 60.0\n')
    s = Settings.load({
        "INTEREST_CONFIG": str(cfg), "INTEREST_PARTITIONS": "8", "KAFKA_BOOTSTRAP_SERVERS": "h:1",
        "INTEREST_WEIGHTS": "click=1,cart=2,order=4", "INTEREST_MAX_WAIT_S": "0.1",
    })  # fmt: skip
    assert (s.partitions, s.updates_topic, s.broker, s.max_wait_s) == (8, "u", "h:1", 0.1)
    assert s.model.tau_s == 60.0 and s.model.weights == {"click": 1, "cart": 2, "order": 4}
    assert s.event_topics == {"click": "click", "cart": "cart", "order": "order"}
    flags = Settings.load({"INTEREST_ENVIRONMENT_FEATURES": "false", "INTEREST_HISTORY_LEN": "12"})
    assert flags.model.environment_features is False and flags.model.history_len == 12


def test_unknown_names_fail_instead_of_being_ignored(tmp_path):
    with pytest.raises(ValueError, match="INTEREST_PARTITONS"):
        Settings.load({"INTEREST_PARTITONS": "3"})
    cfg = tmp_path / "c.toml"
    cfg.write_text("partitons = 3\n")
    with pytest.raises(ValueError, match="unknown settings"):
        Settings.load({"INTEREST_CONFIG": str(cfg)})
    Settings.load({"INTEREST_BROKER_DIR": "/tmp/b"})  # the CLI's own variables are fine


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INTEREST_CART_TOPIC": "click"}, "must differ"),
        ({"INTEREST_DEVICE": "tpu"}, "device"),
        ({"INTEREST_SESSION_TIMEOUT_S": "2"}, "session_timeout_s"),
        ({"INTEREST_MAX_CLASSES": "0"}, "max_classes"),
        ({"INTEREST_WEIGHTS": "click=1"}, "weights lack"),
        ({"INTEREST_TAU_S": "0"}, "tau_s"),
        ({"INTEREST_ENVIRONMENT_FEATURES": "maybe"}, "boolean"),
        ({"INTEREST_TAU_S": "ten"}, "INTEREST_TAU_S='ten': not a number"),
        ({"INTEREST_PARTITIONS": "4.5"}, "INTEREST_PARTITIONS='4.5': not an integer"),
        (
            {"INTEREST_WEIGHTS": "click:1"},
            r"INTEREST_WEIGHTS='click:1': not name=number pairs \(click=1,cart=3\)",
        ),
        ({"INTEREST_TRANSITION_WINDOW": "9"}, "history_len"),
        ({"INTEREST_ENCODER_BACKEND": "tensorrt"}, "encoder_backend"),
        ({"INTEREST_ENCODER_DTYPE": "fp8"}, "encoder_dtype"),
        ({"INTEREST_ENCODER_DTYPE": "bf16", "INTEREST_ENCODER_BACKEND": "onnx-int8"}, "encoder_dtype"),
        ({"INTEREST_ENCODER_THREADS": "-1"}, "encoder_threads"),
        ({"INTEREST_SEARCH_THREADS": "0"}, "search_threads"),
        ({"INTEREST_TRAINER_STEPS": "-1"}, "trainer_steps"),
        ({"INTEREST_STOP_GRACE_S": "0"}, "stop_grace_s"),
        ({"INTEREST_STATE_VECTOR": "float64"}, "state_vector"),
        ({"INTEREST_CATEGORY_BLEND": "1.5"}, "category_blend"),
    ],
)
def test_invalid_settings_fail_with_a_clear_message(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)


def test_the_cli_reports_a_bad_setting_in_one_line_without_a_traceback(tmp_path):
    env = dict(os.environ, INTEREST_TAU_S="ten", INTEREST_BROKER_DIR=str(tmp_path / "broker"))
    command = [sys.executable, "-m", "streams.cli", "tail", "--idle-exit", "1"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "settings: INTEREST_TAU_S='ten': not a number"


@pytest.mark.parametrize(
    "command",
    [["-m", "streams.cli", "worker"], ["-m", "faust", "-A", "streams.app", "worker", "-l", "info"]],
    ids=["interest-stream worker", "faust -A streams.app worker"],
)
def test_both_ways_to_start_a_worker_report_a_bad_setting_in_one_line(tmp_path, command):
    env = dict(os.environ, INTEREST_WEIGHTS="click=a", INTEREST_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, *command], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2
    expected = "settings: INTEREST_WEIGHTS='click=a': not name=number pairs (click=1,cart=3)"
    assert done.stderr.strip() == expected


def test_each_state_dir_is_its_own_static_group_member():
    a = Settings.load({"INTEREST_STATE_DIR": "/tmp/w1"})
    b = Settings.load({"INTEREST_STATE_DIR": "/tmp/w2"})
    assert a.group_instance_id != b.group_instance_id
    assert a.group_instance_id == Settings.load({"INTEREST_STATE_DIR": "/tmp/w1"}).group_instance_id
    assert Settings.load({"INTEREST_INSTANCE_ID": "w-7"}).group_instance_id == "w-7"


def test_encoder_settings_reach_the_encoder(monkeypatch):
    from models import encoder as encoder_module
    from streams import settings as settings_module

    built = {}
    monkeypatch.setattr(encoder_module, "TextEncoder", lambda path, **kwargs: built.update(kwargs))
    monkeypatch.setattr("models.cache.CachedEncoder", lambda encoder, path: None)
    monkeypatch.setattr("models.core.InterestCore", lambda config, cache: None)
    env = {"INTEREST_ENCODER_BACKEND": "onnx-int8", "INTEREST_ENCODER_THREADS": "3"}
    settings_module.build_core(Settings.load({**env, "INTEREST_DEVICE": "cuda"}))
    assert built == {"device": "cuda", "backend": "onnx-int8", "threads": 3, "dtype": "auto"}
    settings_module.build_core(Settings.load({}))
    assert built["threads"] is None and built["backend"] == "torch"  # None: every core the process may use


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('partitions = "8"\n', r"c.toml: partitions = '8', expected an integer"),
        ("partitions = true\n", r"c.toml: partitions = True, expected an integer"),
        ('[model]\ntau_s = "a day"\n', r"c.toml: tau_s = 'a day', expected a number"),
        ("partitions = \n", r"INTEREST_CONFIG=.*c.toml: Invalid value"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_key(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=message):
        Settings.load({"INTEREST_CONFIG": str(cfg)})
    with pytest.raises(SettingsError, match="INTEREST_CONFIG=.*missing.toml: .*No such file"):
        Settings.load({"INTEREST_CONFIG": str(tmp_path / "missing.toml")})
