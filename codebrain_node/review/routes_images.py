"""Slice images for the study page: one windowed slice of any series, and a synthetic series' confidence overlay.

PNGs are rendered here from the stored DICOM (:mod:`codebrain_node.review.render`); the session is closed
before the pixels are read, so a slow disk never holds a database connection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from codebrain_node.config import Settings
from codebrain_node.db.models import Series
from codebrain_node.review import render
from codebrain_node.review.dependencies import AppSettings, Database, Geometries
from codebrain_node.review.worklist import is_row_id

router = APIRouter()

#: The browser may keep a slice for a while: a stored series does not change.
IMAGE_CACHE = {"Cache-Control": "private, max-age=300"}


@router.get("/studies/{study_id}/series/{series_id}/slice.png")
def slice_png(
    settings: AppSettings,
    factory: Database,
    geometries: Geometries,
    study_id: int,
    series_id: int,
    index: int | None = None,
    near: str | None = None,
    level: float | None = None,
    width: float | None = None,
) -> Response:
    with factory() as session:
        series = _series_of_study(session, study_id, series_id)
        paths = instance_paths(series, settings)
    try:
        geometry = geometries.get(series_id, paths)
        position = _slice_index(geometry, index, near)
        pixels = render.read_slice(geometry.slices[position])
    except render.RenderError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    png = render.window_to_png(
        pixels,
        geometry.default_level if level is None else level,
        geometry.default_width if width is None else width,
    )
    return Response(png, media_type="image/png", headers=IMAGE_CACHE)


@router.get("/studies/{study_id}/series/{series_id}/confidence.png")
def confidence_png(
    settings: AppSettings,
    factory: Database,
    geometries: Geometries,
    study_id: int,
    series_id: int,
    index: int = 0,
    opacity: float = 0.6,
) -> Response:
    with factory() as session:
        series = _series_of_study(session, study_id, series_id)
        if not series.is_synthetic:
            raise HTTPException(status_code=404, detail="only synthetic series have a confidence map")
        paths = instance_paths(series, settings)
    try:
        geometry = geometries.get(series_id, paths)
        position = _slice_index(geometry, index, None)
        ref = geometry.slices[position]
        volume = render.load_confidence(ref.path.parent)
        if volume is None:
            raise HTTPException(status_code=404, detail="this series has no confidence map")
        shape = render.read_slice(ref).shape
        plane = render.confidence_slice(volume, ref, position, (int(shape[0]), int(shape[1])))
    except render.RenderError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return Response(render.confidence_to_png(plane, opacity), media_type="image/png", headers=IMAGE_CACHE)


def instance_paths(series: Series, settings: Settings) -> list[Path]:
    """Where the series' instances lie in the data folder (the study page reads the same geometries)."""
    return [instance.file_in(settings.paths.data_dir) for instance in series.instances]


def _series_of_study(session: Session, study_id: int, series_id: int) -> Series:
    if not (is_row_id(study_id) and is_row_id(series_id)):
        raise HTTPException(status_code=404, detail="no such series in this study")
    series = session.scalars(select(Series).where(Series.id == series_id, Series.study_id == study_id)).one_or_none()
    if series is None:
        raise HTTPException(status_code=404, detail="no such series in this study")
    _ = series.instances  # load while the session is open
    return series


def _slice_index(geometry: render.SeriesGeometry, index: int | None, near: str | None) -> int:
    """``near`` (x,y,z in mm, from the input beside it) wins over ``index``, which is clipped to the series."""
    if near:
        try:
            x, y, z = (float(part) for part in near.split(","))
        except ValueError:
            raise HTTPException(status_code=400, detail="near must be x,y,z in mm") from None
        return geometry.nearest_to((x, y, z))
    return int(np.clip(index or 0, 0, len(geometry.slices) - 1))
