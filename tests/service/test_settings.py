"""Settings: defaults, environment, TOML file, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CLICKSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


def test_defaults_follow_the_design_contract() -> None:
    settings = load_settings()
    assert settings.stream == "cafe-clickstream"
    assert settings.bucket == "cafe-clickstream-archive"
    assert settings.lease_table == "cafe-clickstream-leases"
    assert settings.shards == 2
    assert settings.geoip_db is None


def test_state_dir_default_is_durable_not_tmp(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.state_dir == tmp_path / "xdg-state" / "clickstream"
    assert not str(settings.state_dir).startswith(("/tmp/clickstream", "/run"))


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_STREAM", "other-stream")
    monkeypatch.setenv("CLICKSTREAM_SHARDS", "4")
    monkeypatch.setenv("CLICKSTREAM_LOG_LEVEL", "debug")
    settings = load_settings()
    assert (settings.stream, settings.shards, settings.log_level) == ("other-stream", 4, "DEBUG")


def test_toml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "clickstream.toml"
    config.write_text('stream = "from-file"\nshards = 3\n')
    monkeypatch.setenv("CLICKSTREAM_SHARDS", "5")
    settings = load_settings(config)
    assert settings.stream == "from-file"
    assert settings.shards == 5


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CLICKSTREAM_SHARDS", "0", "CLICKSTREAM_SHARDS must be >= 1, got '0'"),
        ("CLICKSTREAM_SHARDS", "two", "CLICKSTREAM_SHARDS must be a whole number, got 'two'"),
        ("CLICKSTREAM_BUCKET", "Not_A_Bucket", "CLICKSTREAM_BUCKET must be a valid S3 bucket name"),
        ("CLICKSTREAM_STREAM", "bad stream!", "CLICKSTREAM_STREAM must be 1-128 characters"),
        ("CLICKSTREAM_LOG_LEVEL", "loud", "CLICKSTREAM_LOG_LEVEL must be one of"),
        ("CLICKSTREAM_GEOIP_DB", "/nonexistent/x.mmdb", "CLICKSTREAM_GEOIP_DB is not a readable"),
        ("CLICKSTREAM_SHRADS", "3", "CLICKSTREAM_SHRADS is not a known setting"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert expected in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSTREAM_SHARDS", "-1")
    monkeypatch.setenv("CLICKSTREAM_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "CLICKSTREAM_SHARDS must be >= 1, got '-1'" in message
    assert "CLICKSTREAM_LOG_FORMAT must be one of" in message


def test_missing_or_broken_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not a readable file"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("stream = [unclosed\n")
    with pytest.raises(SettingsError, match="cannot read CLICKSTREAM_CONFIG file"):
        load_settings(broken)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.shards = 9  # type: ignore[misc]


def test_site_rules_from_a_toml_table_and_from_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A café whose site is not the course's names its own pages; what it leaves out keeps the
    defaults, and the consumer classifies pages by them."""
    from consumers.pages import DEFAULT_SITE_RULES, PageClassifier

    config = tmp_path / "clickstream.toml"
    config.write_text('[site]\nmenu = ["/shop/menu*"]\norder = ["/shop/checkout"]\n')
    rules = load_settings(config).site_rules
    assert rules.menu == ("/shop/menu*",) and rules.order == ("/shop/checkout",)
    assert rules.home == DEFAULT_SITE_RULES.home
    pages = PageClassifier(rules)
    assert pages.classify("/shop/menu/cakes") == "menu"
    assert pages.classify("/cafe/menu.php") == "other"

    monkeypatch.setenv("CLICKSTREAM_SITE", '{"home": ["/"], "purchase_methods": ["POST", "PUT"]}')
    rules = load_settings().site_rules
    assert rules.home == ("/",) and rules.purchase_methods == {"POST", "PUT"}
    assert load_settings(config).site_rules.home == ("/",)  # the environment wins, whole


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"menuu": ["/m"]}', "CLICKSTREAM_SITE is not valid: unknown site rule(s): menuu"),
        ('{"menu": ["menu.php"]}', "must start with '/'"),
        ('{"page_view_statuses": [700]}', "page_view_statuses must be HTTP statuses"),
        ("[1, 2]", "CLICKSTREAM_SITE"),
    ],
)
def test_bad_site_rules_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("CLICKSTREAM_SITE", value)
    with pytest.raises(SettingsError, match="CLICKSTREAM_SITE") as error:
        load_settings()
    assert message in str(error.value)
