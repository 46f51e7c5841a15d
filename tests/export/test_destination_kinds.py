"""Destination kinds: each has its own settings model (checked when the config loads) and registers its class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from codebrain_node.config import (
    ConfigError,
    DestinationSettings,
    DicomDestinationSettings,
    FolderDestinationSettings,
    Settings,
    effective_items,
    load_settings,
    local_node_settings,
)
from codebrain_node.export.base import destination_class, register, registered_kinds
from codebrain_node.export.dispatch import build_destinations
from codebrain_node.export.folder import FolderDestination
from codebrain_node.export.scu import DicomDestination


def _config(tmp_path: Path, tables: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(tables)
    return path


def test_every_configurable_kind_has_a_registered_class() -> None:
    """The config union and the registry list the same kinds, each class built from its own model."""
    union, _ = get_args(DestinationSettings)
    models = {model.model_fields["kind"].default: model for model in get_args(union)}
    kinds = registered_kinds()
    assert set(kinds) == set(models) == {"dicom", "dicomweb", "folder"}
    for kind, cls in kinds.items():
        assert cls.kind == kind and cls.settings_model is models[kind]


def test_build_destinations_looks_each_kind_up(tmp_path: Path) -> None:
    settings = load_settings(
        _config(
            tmp_path,
            '[export]\ncalling_ae_title = "ME"\n[dicom]\nnetwork_timeout_s = 7\n'
            '[[export.destinations]]\nname = "pacs"\nkind = "dicom"\nae_title = "PACS"\nhost = "10.0.0.1"\n'
            'port = 104\n[[export.destinations]]\nname = "archive"\nkind = "folder"\npath = "/srv/out"\n',
        ),
        environ={},
    )
    built = build_destinations(settings)
    pacs, archive = built["pacs"], built["archive"]
    assert isinstance(pacs, DicomDestination) and isinstance(archive, FolderDestination)
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae_title, pacs.timeout_s) == (
        "PACS",
        "10.0.0.1",
        104,
        "ME",
        7.0,
    )
    assert archive.path == Path("/srv/out")


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('kind = "dicom"\nae_title = "PACS"\nport = 104', r"export\.destinations\.0\.dicom\.host \(file "),
        ('kind = "dicom"\nae_title = "PACS"\nhost = "h"\nport = 0', "export.destinations.0.dicom.port"),
        ('kind = "dicom"\nae_title = "PACS"\nhost = "h"\nport = 70000', "export.destinations.0.dicom.port"),
        ('kind = "dicom"\nae_title = "SEVENTEEN_CHARSXX"\nhost = "h"\nport = 1', "dicom.ae_title"),
        ('kind = "dicom"\nae_title = "   "\nhost = "h"\nport = 1', "dicom.ae_title"),
        ('kind = "folder"', r"export\.destinations\.0\.folder\.path \(file "),
        ('kind = "folder"\npath = "/x"\nhost = "h"', r"folder\.host \(file .*\): unknown setting"),
        ('kind = "ftp"', "export.destinations.0 .*'ftp'.*'dicom', 'dicomweb', 'folder'"),
        ('path = "/x"', "export.destinations.0 .*discriminator 'kind'"),
    ],
)
def test_a_bad_destination_is_an_error_when_the_config_loads(tmp_path: Path, table: str, named: str) -> None:
    config = _config(tmp_path, f'[[export.destinations]]\nname = "d"\n{table}\n')
    with pytest.raises(ConfigError, match=named):
        load_settings(config, environ={})


def test_destination_names_are_unique(tmp_path: Path) -> None:
    twice = '[[export.destinations]]\nname = "d"\nkind = "folder"\npath = "/x"\n'
    with pytest.raises(ConfigError, match=r"export\.destinations .*unique: 'd' repeated"):
        load_settings(_config(tmp_path, twice * 2), environ={})


def test_destinations_from_the_environment_as_json() -> None:
    value = json.dumps([{"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "h", "port": 104}])
    settings = load_settings(environ={"CODEBRAIN_EXPORT__DESTINATIONS": value})
    assert settings.export.destinations == [DicomDestinationSettings(name="pacs", ae_title="PACS", host="h", port=104)]
    shown = {key: (value, source) for key, value, source in effective_items(settings)}
    listed, source = shown["export.destinations"]
    assert json.loads(listed)[0]["kind"] == "dicom" and source == "env CODEBRAIN_EXPORT__DESTINATIONS"


def test_each_kinds_model_checks_its_own_fields(tmp_path: Path) -> None:
    folder = FolderDestinationSettings(name="out", path=tmp_path)
    assert folder.kind == "folder"
    assert DicomDestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=104).kind == "dicom"
    with pytest.raises(ValueError, match="host"):
        DicomDestinationSettings(name="pacs", ae_title="PACS", port=104)
    local = local_node_settings(Settings(), tmp_path / "node", folder, quiet_period_s=0.0)
    assert local.export.destinations == [folder]


def test_a_kind_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(FolderDestinationSettings)(DicomDestination)
    assert destination_class("folder") is FolderDestination
    with pytest.raises(ValueError, match="known: dicom, dicomweb, folder"):
        destination_class("stow")
