"""The model's confidence as a Parametric Map (PS3.3 A.75): valid, on the synthetic series' frames, values that map
back to the confidence, coded units and quantity; and a node run with confidence on sends it to PACS beside its
series and withdraws it with it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from reference_mr import acquired_series
from sqlalchemy import Engine, select

from codebrain_node.config import DicomDestinationSettings, Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import Export, ExportKind, ExportStatus, Series, Study, StudyState, utcnow
from codebrain_node.db.session import session_factory, transaction, upgrade
from codebrain_node.db.superseding import supersede
from codebrain_node.engine.weights import load_model
from codebrain_node.engine.worker import Engine as Worker
from codebrain_node.export.base import destination_class
from codebrain_node.export.dispatch import run_due_exports
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from codebrain_node.receive.recorder import record_batch
from codebrain_node.receive.spool import Spool
from codebrain_node.route.stable import check_stable_studies
from codebrain_node.write.parametric_map import CONFIDENCE_SCALE, WrittenParametricMap, write_confidence_map
from codebrain_node.write.synthetic_series import WrittenSeries, write_synthetic_series
from tests.dicom_fixtures import DCIODVFY, dciodvfy_errors, free_port
from tests.e2e.e2e_support import NODE_AE, ORTHANC, STORESCP, Orthanc, StoreSCP, orthanc_destination, require

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[WrittenSeries, np.ndarray, WrittenParametricMap]:
    """A synthetic T1Gd on an oblique T1 reference, with a confidence that differs on every voxel and slice."""
    reference = acquired_series("t1_se_tra", slices=5, oblique_deg=9.0)
    out_dir = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(11)
    confidence = rng.uniform(0, 1, size=(5, 16, 12)).astype(np.float32)
    confidence[0, 0, :3] = [0.0, 1.0, 0.0005]  # the ends of the range and a value on a rounding edge
    series = write_synthetic_series(
        reference,
        rng.uniform(0, 3000, size=(5, 16, 12)),
        Contrast.T1GD,
        model_name="codebrain-small",
        model_version="0.1.0",
        sources={Contrast.T1: reference},
        out_dir=out_dir,
        series_number=1021,
        confidence=confidence,
    )
    confidence_map = write_confidence_map(
        series, confidence, out_dir, model_name="codebrain-small", model_version="0.1.0", series_number=5021
    )
    return series, confidence, confidence_map


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_the_confidence_map_validates(written) -> None:
    _, _, confidence_map = written
    assert dciodvfy_errors(confidence_map.instance.path) == []


def test_its_values_map_back_to_the_confidence_frame_by_frame(written) -> None:
    series, confidence, confidence_map = written
    pm = pydicom.dcmread(confidence_map.instance.path)
    assert pm.SOPClassUID == PARAMETRIC_MAP_STORAGE and int(pm.NumberOfFrames) == len(series.paths)
    (mapping,) = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    stored = pm.pixel_array.astype(np.float64)
    assert stored.max() <= CONFIDENCE_SCALE
    values = stored * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    # frames may be in any order: each is matched to its slice by the instance it derives from
    order = {instance.sop_instance_uid: index for index, instance in enumerate(series.instances)}
    for frame, item in zip(values, pm.PerFrameFunctionalGroupsSequence, strict=True):
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        np.testing.assert_allclose(frame, confidence[order[source.ReferencedSOPInstanceUID]], atol=0.5 / 1000 + 1e-9)
    assert (int(mapping.RealWorldValueFirstValueMapped), int(mapping.RealWorldValueLastValueMapped)) == (0, 1000)


def test_units_and_quantity_are_coded_and_it_is_flagged_derived(written) -> None:
    _, _, confidence_map = written
    pm = pydicom.dcmread(confidence_map.instance.path, stop_before_pixels=True)
    (mapping,) = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    (unit,) = mapping.MeasurementUnitsCodeSequence
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    (quantity,) = mapping.QuantityDefinitionSequence
    assert quantity.ConceptNameCodeSequence[0].CodeValue == "246205007"  # SCT "Quantity"
    concept = quantity.ConceptCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("CONFIDENCE", "99CODEBRAIN")
    assert [item.CodingSchemeDesignator for item in pm.CodingSchemeIdentificationSequence] == ["99CODEBRAIN"]
    assert list(pm.ImageType)[:2] == ["DERIVED", "PRIMARY"] and pm.ContentLabel == "CONFIDENCE"
    assert pm.SyntheticData == "YES" and pm.ContentQualification == "RESEARCH"
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in pm.ContributingEquipmentSequence]
    assert purposes == ["109100", "109101"]  # this node synthesised; the scanner (not the node) acquired
    assert pm.SeriesDescription == "CONFIDENCE of synthetic T1Gd series 1021"


def test_it_references_the_synthetic_series_and_lies_on_its_frame_of_reference(written) -> None:
    series, _, confidence_map = written
    pm = pydicom.dcmread(confidence_map.instance.path, stop_before_pixels=True)
    first = pydicom.dcmread(series.paths[0], stop_before_pixels=True)
    assert pm.StudyInstanceUID == first.StudyInstanceUID and pm.SeriesInstanceUID != first.SeriesInstanceUID
    assert pm.FrameOfReferenceUID == series.frame_of_reference_uid == confidence_map.frame_of_reference_uid
    (referenced,) = pm.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        instance.sop_instance_uid for instance in series.instances
    }
    positions = {
        instance.sop_instance_uid: [float(v) for v in pydicom.dcmread(instance.path).ImagePositionPatient]
        for instance in series.instances
    }
    for item in pm.PerFrameFunctionalGroupsSequence:
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[source.ReferencedSOPInstanceUID], atol=1e-4)
    assert confidence_map.instance.path.parent.parent == series.paths[0].parent.parent  # beside the series


def test_a_map_that_does_not_fit_the_series_is_refused(written, tmp_path: Path) -> None:
    series, confidence, _ = written
    with pytest.raises(ValueError, match="confidence is"):
        write_confidence_map(series, confidence[:, :8], tmp_path, model_name="m", model_version="1", series_number=1)


def test_orthanc_stores_the_map_the_node_sends(written, tmp_path: Path) -> None:
    """A PACS takes it: the node's C-STORE (contexts from the files) to Orthanc, which files it beside the series."""
    require(ORTHANC, "Orthanc")
    series, _, confidence_map = written
    pacs = Orthanc(tmp_path / "orthanc")
    try:
        settings = Settings.model_validate({"export": {"calling_ae_title": NODE_AE}})
        entry = orthanc_destination(pacs)
        destination = destination_class(entry.kind).from_settings(entry, settings)
        destination.send([*series.paths, confidence_map.instance.path])
        stored = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in pacs.series()}
        held = stored[confidence_map.series_instance_uid]
        assert held["MainDicomTags"]["Modality"] == "OT" and len(held["Instances"]) == 1
        assert held["ParentStudy"] == stored[series.series_instance_uid]["ParentStudy"]
    finally:
        pacs.stop()


# --- a node with confidence on: engine, exporter, superseding ---------------------------------------------------

TINY = {
    "contrasts": ["T1", "T1Gd", "T2", "FLAIR"],
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    "image_size": 256,
    "confidence": True,
}
SLICES = 8  # the classifier wants at least 8 slices for a volume


def _node(tmp_path: Path, pacs: StoreSCP) -> Settings:
    weights = save_inference_checkpoint(
        CodeBrain(ModelConfig.from_dict(TINY)).eval(),
        tmp_path / "tiny.safetensors",
        {"model_name": "tiny-confidence", "model_version": "1"},
    )
    destination = DicomDestinationSettings(
        name="pacs", ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port, accepts_rejection_notes=True
    )
    return Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "routing": {"quiet_period_s": 0.0, "synthesize": ["T1Gd"]},
            "export": {
                "policy": "auto",
                "calling_ae_title": "CODEBRAIN",
                "destinations": [destination.model_dump(mode="json")],
            },
            "model": {"weights": str(weights), "device": "cpu", "batch_size": 8},
            "dicom": {"network_timeout_s": 10, "acse_timeout_s": 10, "dimse_timeout_s": 10},
        }
    )


def _receive(settings: Settings, factory, study: Path) -> None:  # type: ignore[no-untyped-def]
    """File every instance of ``study`` as the receiver does (spool, then one recorded batch)."""
    spool = Spool(settings.paths.data_dir)
    instances = []
    for path in sorted(study.rglob("*.dcm")):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) File Meta Information Group Length
        outcome = spool.store(
            data[144 + meta_length :],  # the dataset as a peer sends it (PS3.10 7.1)
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
        )
        assert outcome.instance is not None
        instances.append(outcome.instance)
    record_batch(factory, instances)


def _received(pacs: StoreSCP) -> dict[str, list[pydicom.Dataset]]:
    by_class: dict[str, list[pydicom.Dataset]] = {}
    for path in pacs.files():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        by_class.setdefault(str(dataset.SOPClassUID), []).append(dataset)
    return by_class


def test_an_engine_run_with_confidence_on_sends_the_map_beside_its_series_and_withdraws_it_with_it(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    require(STORESCP, "DCMTK storescp")
    case = make_phantom_case([Contrast.T1, Contrast.T2, Contrast.FLAIR], seed=5, resolution_mm=4.0)
    middle = case.images[Contrast.T1].GetSize()[2] // 2
    slab = {
        contrast: image[:, :, middle - SLICES // 2 : middle + SLICES // 2] for contrast, image in case.images.items()
    }
    study = write_dicom_study(slab, tmp_path / "study", seed=5)
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    try:
        settings = _node(tmp_path, pacs)
        upgrade(sqlite_engine)
        factory = session_factory(sqlite_engine)
        _receive(settings, factory, study)
        model = load_model(settings.model.weights, "cpu")
        check_stable_studies(factory, settings, list(model.contrasts), now=utcnow() + timedelta(minutes=5))
        assert Worker(settings, factory, model=model, name="test").run_once()
        while run_due_exports(factory, settings):
            pass

        with factory() as session:
            (study_row,) = session.scalars(select(Study))
            assert StudyState(study_row.state) is StudyState.EXPORTED
            synthetic = session.scalars(select(Series).where(Series.is_synthetic)).all()
            (mr,) = [s for s in synthetic if s.describes_series_id is None]
            (confidence_map,) = [s for s in synthetic if s.describes_series_id is not None]
            assert confidence_map.describes_series_id == mr.id and confidence_map.contrast == mr.contrast == "T1Gd"
            assert [e.destination for e in confidence_map.exports] == [e.destination for e in mr.exports] == ["pacs"]
            assert {ExportStatus(e.status) for e in [*mr.exports, *confidence_map.exports]} == {ExportStatus.SENT}
            mr_uid, map_uid = mr.series_instance_uid, confidence_map.series_instance_uid

        received = _received(pacs)
        sent_mr = received[MR_STORAGE]
        assert {ds.SeriesInstanceUID for ds in sent_mr} == {mr_uid} and len(sent_mr) == SLICES
        (sent_map,) = received[PARAMETRIC_MAP_STORAGE]
        assert sent_map.SeriesInstanceUID == map_uid
        assert sent_map.ReferencedSeriesSequence[0].SeriesInstanceUID == mr_uid
        assert int(sent_map.NumberOfFrames) == len(sent_mr)
        assert sent_map.FrameOfReferenceUID == sent_mr[0].FrameOfReferenceUID

        # superseding the series supersedes its map; the exporter withdraws both where it sent them
        with transaction(factory) as session:
            mr = session.scalars(select(Series).where(Series.series_instance_uid == mr_uid)).one()
            supersede(session, mr, by=None, reason="test: withdrawn", actor="test")
        while run_due_exports(factory, settings):
            pass
        with factory() as session:
            confidence_map = session.scalars(select(Series).where(Series.series_instance_uid == map_uid)).one()
            assert confidence_map.superseded_at is not None
            notes = session.scalars(select(Export).where(Export.kind == ExportKind.REJECTION_NOTE)).all()
            assert sorted(n.series.series_instance_uid for n in notes) == sorted([mr_uid, map_uid])
            assert {ExportStatus(n.status) for n in notes} == {ExportStatus.SENT}
        rejected = {
            item.ReferencedSOPInstanceUID
            for note in _received(pacs)[KOS_STORAGE]
            for study_item in note.CurrentRequestedProcedureEvidenceSequence
            for series_item in study_item.ReferencedSeriesSequence
            for item in series_item.ReferencedSOPSequence
        }
        assert sent_map.SOPInstanceUID in rejected and {ds.SOPInstanceUID for ds in sent_mr} <= rejected
    finally:
        pacs.stop()
