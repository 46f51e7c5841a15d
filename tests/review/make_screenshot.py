"""Screenshot of the review study view for the README (docs/img/review_study.png); not run by CI.

    python tests/review/make_screenshot.py                          # demo study built from ../shared/data
    python tests/review/make_screenshot.py --config node.toml --study 12   # a real study of a node

The demo study is made from the BraTS case in ../shared/data: its T1 is the input, and its acquired T2 stands in
for the synthetic T2 with a demonstration confidence map (low where FLAIR is bright, i.e. in the lesion), so
the picture shows every part of the page without needing the engine. With ``--config``/``--study`` the page of a
real study of that node is taken; the browser signs in through the trusted-header path, on loopback only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from conftest import shared_data_dir  # noqa: E402  (tests/conftest.py)
from review_seed import make_settings, seed_study  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from codebrain_node.config import Settings, load_settings  # noqa: E402
from codebrain_node.db.session import make_engine, session_factory, upgrade  # noqa: E402
from codebrain_node.review.server import ReviewServer  # noqa: E402

SCREENSHOT_USER_HEADER = "X-Screenshot-User"


def brats_volumes(case: Path, first: int = 50, last: int = 120, step: int = 2) -> tuple[np.ndarray, ...]:
    """T1, T2 and a demo confidence [Z, H, W] from the BraTS case, axial slices as stored (rows P, columns L)."""
    import nibabel as nib

    def load(name: str) -> np.ndarray:
        volume = np.asarray(nib.load(case / f"{name}.nii.gz").dataobj, dtype=np.float32)
        return np.clip(volume[:, :, first:last:step].transpose(2, 1, 0), 0, None)

    t1, t2, flair = load("t1n"), load("t2w"), load("t2f")
    brain = t1 > 0
    bright = np.percentile(flair[brain], 99.5)
    lesion = np.clip((flair - np.percentile(flair[brain], 85)) / (bright - np.percentile(flair[brain], 85)), 0, 1)
    confidence = np.where(brain, 1.0 - 0.85 * lesion, 1.0).astype(np.float32)
    return t1, t2, confidence


def demo(out: Path, workdir: Path) -> None:
    case = shared_data_dir() / "BraTS-GLI-00001-000"
    if not case.is_dir():
        raise SystemExit(f"the demo needs {case} (see ../shared/data/README.md)")
    settings = make_settings(workdir)
    engine = make_engine(f"sqlite:///{workdir / 'node.db'}")
    upgrade(engine)
    factory = session_factory(engine)
    volumes = brats_volumes(case)
    seeded = seed_study(settings, factory, accession="A10023", volumes=volumes, z_step=2.0, pixel_spacing=1.0)
    shoot(settings, factory, seeded.study_id, out)


def shoot(settings: Settings, factory: object, study_id: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    settings.review.bind_address, settings.review.port = "127.0.0.1", 0
    settings.review.trusted_user_header = SCREENSHOT_USER_HEADER
    settings.review.trusted_proxies = ["127.0.0.1"]
    settings.review.trusted_user_role = "reviewer"
    with ReviewServer(settings, factory) as server, sync_playwright() as driver:  # type: ignore[arg-type]
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 1120}, extra_http_headers={SCREENSHOT_USER_HEADER: "radiologist"}
        )
        page = context.new_page()
        page.goto(f"{server.url}/studies/{study_id}")
        page.wait_for_function(
            "() => [...document.images].filter(i => i.getAttribute('src')).every(i => i.complete && i.naturalWidth)"
        )
        page.wait_for_timeout(300)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "review_study.png")
    parser.add_argument("--config", type=Path, help="a node's config file (with --study)")
    parser.add_argument("--study", type=int, help="study id on that node")
    args = parser.parse_args()
    if args.config is not None:
        if args.study is None:
            parser.error("--config needs --study")
        settings = load_settings(args.config)
        factory = session_factory(make_engine(settings.database_url))
        shoot(settings, factory, args.study, args.out)
        return
    with tempfile.TemporaryDirectory() as workdir:
        demo(args.out, Path(workdir))


if __name__ == "__main__":
    main()
