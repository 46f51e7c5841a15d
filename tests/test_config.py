"""Settings: defaults, file, environment, validation errors that name the key, masking in `config show`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from codebrain_node.config import (
    DEFAULT_CONFIG_FILE,
    ConfigError,
    FolderDestinationSettings,
    Settings,
    effective_items,
    load_settings,
    local_node_settings,
)
from codebrain_node.contrasts import Contrast


def test_documented_file_holds_exactly_the_defaults() -> None:
    """configs/node.toml is the documentation of every default: it must not drift from the code."""
    from_file = load_settings(DEFAULT_CONFIG_FILE, environ={})
    defaults = load_settings(None, environ={})
    assert from_file.model_dump() == defaults.model_dump()
    documented = tomllib.loads(DEFAULT_CONFIG_FILE.read_text())
    text = DEFAULT_CONFIG_FILE.read_text()
    for section, fields in Settings.model_fields.items():
        if section == "sources":
            continue
        assert section in documented, f"[{section}] missing from node.toml"
        for key in fields.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text, f"{section}.{key} is not documented in node.toml"


def test_environment_overrides_file_and_records_source(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom]\nae_title = "FROMFILE"\nport = 4000\n[routing]\nsynthesize = ["t1c"]\n')
    settings = load_settings(config, environ={"CODEBRAIN_DICOM__PORT": "5000", "CODEBRAIN_DATABASE__URL": "sqlite://"})
    assert settings.dicom.ae_title == "FROMFILE"
    assert settings.dicom.port == 5000
    assert settings.routing.synthesize == [Contrast.T1GD]
    sources = {key: source for key, _, source in effective_items(settings)}
    assert sources["dicom.port"] == "env CODEBRAIN_DICOM__PORT"
    assert sources["dicom.ae_title"] == f"file {config}"
    assert sources["dicom.max_associations"] == "default"


def test_environment_lists_accept_commas_and_json() -> None:
    settings = load_settings(environ={"CODEBRAIN_DICOM__ALLOWED_CALLERS": "MRI1, PACS"})
    assert settings.dicom.allowed_callers == ["MRI1", "PACS"]
    settings = load_settings(environ={"CODEBRAIN_DICOM__ALLOWED_CALLERS": '["A"]'})
    assert settings.dicom.allowed_callers == ["A"]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CODEBRAIN_DICOM__PORT": "eleven"}, "dicom.port (env CODEBRAIN_DICOM__PORT)"),
        ({"CODEBRAIN_DICOM__PORT": "70000"}, "dicom.port"),
        ({"CODEBRAIN_DICOM__AE_TITLE": "THIS_TITLE_IS_TOO_LONG"}, "dicom.ae_title"),
        ({"CODEBRAIN_DICOM__PROT": "104"}, "dicom.prot (env CODEBRAIN_DICOM__PROT): unknown setting"),
        ({"CODEBRAIN_NOSECTION__KEY": "1"}, "nosection"),
        ({"CODEBRAIN_ROUTING__SYNTHESIZE": "T3"}, "unknown contrast 'T3'"),
    ],
)
def test_bad_environment_value_names_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[export]\npolicy = 'sometimes'\n")
    with pytest.raises(ConfigError, match=r"export\.policy \(file .*bad\.toml\)"):
        load_settings(config, environ={})
    config.write_text("[dicom\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_database_password_is_masked() -> None:
    settings = load_settings(environ={"CODEBRAIN_DATABASE__URL": "postgresql+psycopg://node:s3cret@db:5432/cb"})
    shown = dict((key, value) for key, value, _ in effective_items(settings))
    assert "s3cret" not in shown["database.url"]
    assert shown["database.url"] == "postgresql+psycopg://node:********@db:5432/cb"
    assert "s3cret" not in repr(settings)
    assert settings.database_url.endswith("s3cret@db:5432/cb")


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = load_settings(environ={"CODEBRAIN_PATHS__DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'codebrain.db'}"


def test_local_node_settings_is_a_private_loopback_node_and_leaves_the_original_alone(tmp_path):
    original = Settings()
    out = FolderDestinationSettings(name="out", path=tmp_path / "out")
    local = local_node_settings(original, tmp_path / "node", out, quiet_period_s=1.5, callers=["SCANNER"])
    assert local.paths.data_dir == tmp_path / "node" and str(tmp_path / "node") in local.database_url
    assert (local.dicom.bind_address, local.dicom.port, local.dicom.allowed_callers) == ("127.0.0.1", 0, ["SCANNER"])
    assert local.export.policy == "auto" and local.export.destinations == [out]
    assert local.routing.quiet_period_s == 1.5
    assert original.dicom.port != 0 and original.export.destinations != [out]
    offline = local_node_settings(original, tmp_path / "node", out, quiet_period_s=0.0)
    assert offline.dicom.port == original.dicom.port  # no listener settings without callers
