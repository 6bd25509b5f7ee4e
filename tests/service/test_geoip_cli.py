"""`clickstream geoip`: which database is in use, lookups, builds; bad files exit 2 cleanly."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from consumers.geo.locator import ATTRIBUTION, city_catalog_path, default_database_path
from service.cli import main
from tests.consumers.dbip_fixture import write_dbip_package, write_dbip_tarball

CATALOG = json.loads(city_catalog_path().read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_show_names_the_embedded_database_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["geoip"]) == 0
    out = capsys.readouterr().out
    assert str(default_database_path()) in out
    assert "embedded" in out
    assert "DBIP-City-Lite" in out
    assert ATTRIBUTION in out
    assert "clickstream geoip build --full" in out


def test_show_json_reports_the_configured_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy.mmdb"
    copy.write_bytes(default_database_path().read_bytes())
    monkeypatch.setenv("CLICKSTREAM_GEOIP_DB", str(copy))
    assert main(["geoip", "show", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(copy.resolve())
    assert info["chosen_by"] == "CLICKSTREAM_GEOIP_DB"
    assert info["embedded"] is False
    assert info["database_type"] == "DBIP-City-Lite"


def test_lookup_prints_city_region_country_or_unknown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    city = CATALOG["cities"][0]
    ip = str(ipaddress.ip_network(city["ipv4"][0]).network_address + 1)
    assert main(["geoip", "lookup", ip, "10.0.0.1", "garbage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{city['city']}, {city['region']}, {city['country']} ({city['continent']})" in lines[0]
    assert lines[1].split() == ["10.0.0.1", "Unknown"]
    assert lines[2].split() == ["garbage", "Unknown"]


def test_lookup_json(capsys: pytest.CaptureFixture[str]) -> None:
    city = CATALOG["cities"][1]
    ip = str(ipaddress.ip_network(city["ipv6"][0]).network_address + 7)
    assert main(["geoip", "lookup", "--json", ip]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert (found["ip"], found["city"], found["region"]) == (ip, city["city"], city["region"])


@pytest.mark.parametrize("kind", ["text file", "directory", "missing"])
def test_an_unusable_database_exits_2_with_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "GeoLite2-City.mmdb"
    if kind == "text file":
        path.write_text("<html>403</html>", encoding="utf-8")
    elif kind == "directory":
        path.mkdir()
    assert main(["geoip", "lookup", "--db", str(path), "1.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "Traceback" not in err


def test_a_bad_clickstream_geoip_db_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "not.mmdb"
    path.write_bytes(b"\x00" * 100)
    monkeypatch.setenv("CLICKSTREAM_GEOIP_DB", str(path))
    assert main(["geoip"]) == 2
    err = capsys.readouterr().err
    assert "not a MaxMind DB" in err and "Traceback" not in err


def test_build_full_from_a_tarball_prints_how_to_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = write_dbip_tarball(write_dbip_package(tmp_path / "src"), tmp_path / "dbip.tgz")
    out = tmp_path / "full.mmdb"
    assert main(["geoip", "build", "--full", "--source", str(tarball), "--out", str(out)]) == 0
    assert f"set CLICKSTREAM_GEOIP_DB={out} to use it" in capsys.readouterr().out
    assert main(["geoip", "lookup", "--db", str(out), "23.10.1.1"]) == 0
    assert "Seattle, Washington, US (NA)" in capsys.readouterr().out


def test_build_sample_into_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_dbip_package(tmp_path / "src")
    out = tmp_path / "data"
    argv = ["geoip", "build", "--sample", "--source", str(source), "--out", str(out), "--seed", "3"]
    assert main(argv) == 0
    assert "1 cities" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "cities.json",
        "dbip-city-sample.mmdb",
        "LICENSE-DBIP.txt",
    }


def test_build_with_a_bad_source_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.tgz"
    bogus.write_text("not a tarball", encoding="utf-8")
    assert main(["geoip", "build", "--full", "--source", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "cannot unpack" in err and "Traceback" not in err


def test_build_needs_full_or_sample(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["geoip", "build"])
    assert exit_.value.code == 2
    assert "--full" in capsys.readouterr().err


def test_help_explains_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["geoip", "--help"])
    out = capsys.readouterr().out
    for text in ("lookup", "build --full", "build --sample", "CLICKSTREAM_GEOIP_DB", ATTRIBUTION):
        assert text in out


def test_show_points_at_a_built_full_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "cache" / "clickstream" / "geoip" / "dbip-city-full.mmdb"
    full.parent.mkdir(parents=True)
    full.write_bytes(default_database_path().read_bytes())
    assert main(["geoip"]) == 0
    assert f"CLICKSTREAM_GEOIP_DB={full}" in capsys.readouterr().out
