"""Series classification from headers by the shipped rule table, with reasons; picking one series per contrast."""

from __future__ import annotations

from pathlib import Path

import pytest
from mr_headers import mr_header, write_series

from codebrain_node.contrasts import Contrast
from codebrain_node.route.classify import (
    RuleTable,
    SeriesHeaders,
    classify_paths,
    load_rules,
    pick_inputs,
)

RULES = load_rules()
T1, T1GD, T2, PD, FLAIR = Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.PD, Contrast.FLAIR

# (case, header, expected contrast or None, a word the reason must contain)
CASES = [
    # Siemens
    (
        "siemens mprage",
        mr_header(
            "t1_mprage_sag_p2_iso",
            scanning=("GR", "IR"),
            variant=("SK", "SP", "MP"),
            acquisition="3D",
            tr=2300,
            te=2.98,
            ti=900,
            thickness=1.0,
        ),
        T1,
        "T1-weighted",
    ),
    (
        "siemens mprage + agent",
        mr_header(
            "t1_mprage_sag_p2_iso", scanning=("GR", "IR"), acquisition="3D", tr=2300, te=2.98, ti=900, agent="Gadovist"
        ),
        T1GD,
        "ContrastBolusAgent",
    ),
    ("siemens t1 se KM", mr_header("t1_se_tra_KM", tr=550, te=9.8), T1GD, "post-contrast name"),
    ("siemens t2 tse", mr_header("t2_tse_tra", tr=4000, te=91), T2, "T2-weighted"),
    (
        "siemens tirm dark-fluid",
        mr_header("t2_tirm_tra_dark-fluid", scanning=("SE", "IR"), tr=9000, te=81, ti=2500),
        FLAIR,
        "FLAIR",
    ),
    (
        "siemens space da-fl",
        mr_header("t2_spc_da-fl_sag_p2_iso", scanning=("SE", "IR"), acquisition="3D", tr=5000, te=387, ti=1800),
        FLAIR,
        "FLAIR",
    ),
    ("siemens pd tse", mr_header("pd_tse_tra", tr=3000, te=12), PD, "proton density"),
    ("siemens pd+t2 echo 1", mr_header("pd+t2_tse_tra", tr=3000, te=12), PD, "dual-echo"),
    ("siemens pd+t2 echo 2", mr_header("pd+t2_tse_tra", tr=3000, te=95), T2, "dual-echo"),
    # GE
    (
        "ge bravo",
        mr_header(
            "Sag 3D BRAVO",
            scanning=("GR",),
            variant=("SS", "SK"),
            acquisition="3D",
            tr=8.2,
            te=3.2,
            ti=450,
            thickness=1.0,
        ),
        T1,
        "T1-weighted",
    ),
    ("ge t1 post gad", mr_header("AX T1 POST GAD", tr=600, te=12), T1GD, "post-contrast name"),
    ("ge t1 se +c", mr_header("Ax T1 SE +C", tr=500, te=10), T1GD, "post-contrast"),
    ("ge t2 frfse", mr_header("Ax T2 FRFSE", tr=5000, te=102), T2, "T2-weighted"),
    ("ge t2 flair", mr_header("AX T2 FLAIR", scanning=("SE", "IR"), tr=9000, te=120, ti=2200), FLAIR, "FLAIR"),
    ("ge pd fse", mr_header("AX PD FSE", tr=3000, te=20), PD, "proton density"),
    (
        "ge t1 flair is a T1",
        mr_header("Sag T1 FLAIR", scanning=("SE", "IR"), tr=2000, te=9, ti=750),
        T1,
        "T1-weighted FLAIR",
    ),
    ("ge spgr", mr_header("AX FSPGR 3D", scanning=("GR",), acquisition="3D", tr=7, te=2.5), T1, "T1-weighted"),
    # Philips
    ("philips t1 tfe", mr_header("T1W_3D_TFE", scanning=("GR",), acquisition="3D", tr=8, te=3.7), T1, "T1-weighted"),
    (
        "philips t1 tfe gd",
        mr_header("T1W_3D_TFE_GD", scanning=("GR",), acquisition="3D", tr=8, te=3.7),
        T1GD,
        "post-contrast",
    ),
    ("philips t2w tse", mr_header("T2W_TSE", tr=3000, te=80), T2, "T2-weighted"),
    ("philips t2w flair", mr_header("T2W_FLAIR", scanning=("SE", "IR"), tr=11000, te=125, ti=2800), FLAIR, "FLAIR"),
    ("philips sense flair", mr_header("sT2W_FLAIR", scanning=("SE", "IR"), tr=11000, te=125, ti=2800), FLAIR, "FLAIR"),
    ("philips pdw tse", mr_header("PDW_TSE", tr=2500, te=30), PD, "proton density"),
    # Names say nothing: header physics decides
    ("physics flair", mr_header("series 5", scanning=("SE", "IR"), tr=9000, te=100, ti=2500), FLAIR, "physics"),
    ("physics t1 se", mr_header("series 6", tr=500, te=15), T1, "physics"),
    ("physics t1 se + agent", mr_header("series 7", tr=500, te=15, agent="Dotarem"), T1GD, "ContrastBolusAgent"),
    ("physics t2 se", mr_header("series 8", tr=4000, te=100), T2, "physics"),
    ("physics pd se", mr_header("series 9", tr=2500, te=15), PD, "physics"),
    ("physics 3d gre", mr_header("series 10", scanning=("GR",), acquisition="3D", tr=20, te=4), T1, "3-D"),
    (
        "physics stir is no input",
        mr_header("series 11", scanning=("SE", "IR"), tr=4000, te=40, ti=150),
        None,
        "no rule matched",
    ),
    # Never inputs
    (
        "localizer image type",
        mr_header("localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        None,
        "LOCALIZER",
    ),
    ("ge 3-plane loc by name", mr_header("3-Plane Loc", scanning=("GR",), tr=5, te=1.5), None, "excluded by name"),
    ("philips survey by name", mr_header("Survey", scanning=("GR",), tr=11, te=4.6), None, "excluded by name"),
    (
        "derived mpr",
        mr_header("t1_mprage_sag_p2_iso_MPR_tra", image_type=("DERIVED", "SECONDARY", "MPR")),
        None,
        "DERIVED",
    ),
    (
        "our synthetic output",
        mr_header("SYNTHETIC T1Gd (codebrain)", tr=500, te=10, synthetic=True),
        None,
        "Synthetic Data",
    ),
    ("not MR", mr_header("t1 head", modality="CT"), None, "not MR"),
    ("diffusion", mr_header("ep2d_diff_tra", scanning=("SE", "EP"), tr=5000, te=90), None, "excluded by name"),
    ("swi", mr_header("t2_swi_tra_p2", scanning=("GR",), acquisition="3D", tr=27, te=20), None, "excluded"),
    ("pre-contrast named, agent filled", mr_header("AX T1 PRE", tr=550, te=10, agent="Gadavist"), T1, "pre-contrast"),
]


@pytest.mark.parametrize(("header", "expected", "reason_word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classification_table(header, expected: Contrast | None, reason_word: str) -> None:
    result = RULES.classify(SeriesHeaders.from_datasets([header], n_instances=40))
    assert result.contrast == expected, result.reason
    assert reason_word.lower() in result.reason.lower()
    assert result.label == (expected.value if expected else "other")


def test_covers_three_vendors_and_every_contrast() -> None:
    """The table above is the specification: keep it broad."""
    for vendor in ("siemens", "ge", "philips"):
        found = {c[2] for c in CASES if c[0].startswith(vendor) and c[2] is not None}
        assert found >= {T1, T1GD, T2, PD, FLAIR}, vendor


def test_too_few_slices_are_never_inputs() -> None:
    header = mr_header("t2_tse_tra", tr=4000, te=91)
    assert RULES.classify(SeriesHeaders.from_datasets([header], n_instances=3)).reason.startswith("too few slices")
    assert RULES.classify(SeriesHeaders.from_datasets([header], n_instances=RULES.min_slices)).contrast == T2
    multi_frame = mr_header("t2_tse_tra", tr=4000, te=91, NumberOfFrames=30)
    assert RULES.classify(SeriesHeaders.from_datasets([multi_frame], n_instances=1)).contrast == T2


def test_flag_on_one_sampled_instance_excludes_the_series(tmp_path: Path) -> None:
    """The last instance is sampled too, so a flag set on only some images is still seen."""
    header = mr_header("t1_se_tra", tr=500, te=10)
    _, clean = write_series(tmp_path, header, 12, study_uid="1.2.3")
    _, flagged = write_series(tmp_path, header, 12, study_uid="1.2.3", flags_on_last={"SyntheticData": "YES"})
    assert classify_paths(clean, RULES).contrast == T1
    assert classify_paths(flagged, RULES).reason == "Synthetic Data (0008,001C) = YES"
    assert classify_paths([], RULES).reason == "no instances"
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    assert classify_paths([broken], RULES).reason == "headers unreadable"
    assert RULES.classify(SeriesHeaders(), written_by_node=True).reason == "written by this node"


def _claim(uid: str, header, n: int) -> tuple[str, object]:
    return uid, RULES.classify(SeriesHeaders.from_datasets([header], n_instances=n))


def test_two_series_claiming_one_contrast_pick_by_documented_rule() -> None:
    se_2d = mr_header("t1_se_tra", tr=500, te=10, thickness=5.0, series_number=3)
    mprage = mr_header(
        "t1_mprage_sag", scanning=("GR", "IR"), acquisition="3D", tr=2300, te=3, ti=900, thickness=1.0, series_number=2
    )
    t2_first = mr_header("t2_tse_tra", tr=4000, te=91, series_number=4)
    t2_repeat = mr_header("t2_tse_tra", tr=4000, te=91, series_number=7)
    flair_thick = mr_header("t2_tirm_tra_dark-fluid", scanning=("SE", "IR"), tr=9000, te=81, ti=2500, thickness=5)
    flair_thin = mr_header("t2_tirm_tra_dark-fluid", scanning=("SE", "IR"), tr=9000, te=81, ti=2500, thickness=3)
    picked = pick_inputs(
        [
            _claim("se2d", se_2d, 24),
            _claim("mprage", mprage, 176),
            _claim("t2.first", t2_first, 30),
            _claim("t2.repeat", t2_repeat, 30),
            _claim("flair.thick", flair_thick, 30),
            _claim("flair.thin", flair_thin, 30),
        ]
    )
    # 3-D beats 2-D; thinner beats thicker; equal protocols: the later series (the repeat) wins.
    assert picked == {T1: "mprage", T2: "t2.repeat", FLAIR: "flair.thin"}
    # A truncated repeat loses to the complete first acquisition (coverage before series number).
    picked = pick_inputs([_claim("t2.first", t2_first, 30), _claim("t2.repeat", t2_repeat, 12)])
    assert picked == {T2: "t2.first"}
    # Contrasts the model cannot read are not inputs.
    assert pick_inputs([_claim("t2.first", t2_first, 30)], allowed=[T1, FLAIR]) == {}


def test_custom_rule_table_overrides_and_validates(tmp_path: Path) -> None:
    table = tmp_path / "site.toml"
    table.write_text(
        "min_slices = 2\n[[rules]]\nname = 'site: NEURO_AX_7 is our FLAIR'\ncontrast = 'flair'\n"
        "pattern = 'neuro ax 7'\n"
    )
    rules = load_rules(table)
    result = rules.classify(SeriesHeaders.from_datasets([mr_header("NEURO_AX_7")], n_instances=2))
    assert (result.contrast, result.reason) == (FLAIR, "site: NEURO_AX_7 is our FLAIR")
    with pytest.raises(ValueError, match=r"rules\[0\]: a range"):
        RuleTable.from_mapping({"rules": [{"contrast": "T1", "te_ms": [30, 10]}]})
    with pytest.raises(ValueError, match="unknown contrast"):
        RuleTable.from_mapping({"rules": [{"contrast": "T3"}]})
    with pytest.raises(ValueError, match="do not exist"):
        load_rules(tmp_path / "missing.toml")


def test_classify_command_lists_each_series_with_its_reason(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from codebrain_node.cli import app

    write_series(tmp_path / "dicom", mr_header("Ax T2 FRFSE", tr=5000, te=102, series_number=3), 12, study_uid="1.2")
    write_series(
        tmp_path / "dicom", mr_header("localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), 3, study_uid="1.2"
    )
    (tmp_path / "dicom" / "notes.txt").write_text("not dicom")
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "dicom")], env={"CODEBRAIN_CONFIG": ""})
    assert result.exit_code == 0, result.output
    lines = sorted(result.output.splitlines())
    assert len(lines) == 2
    assert lines[0].startswith("T2") and "T2-weighted" in lines[0] and "12 slices" in lines[0]
    assert lines[1].startswith("other") and "LOCALIZER" in lines[1]
    empty = CliRunner().invoke(app, ["classify", str(tmp_path / "nothing-here")], env={"CODEBRAIN_CONFIG": ""})
    assert empty.exit_code == 1
