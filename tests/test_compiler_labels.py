"""compiler.labels: the label table and the rule-based reference labeller (phantoms with exact labels,
and a real chest CT whose right lung is largely opacified)."""

from __future__ import annotations

import pytest
from conftest import shared_case

from compiler.evaluate import dice
from compiler.labels.reference import reference_labels
from compiler.labels.table import LABEL_TABLE, NUM_CLASSES, VALUE
from compiler.phantom import LABELS, make_phantom


def test_label_table_matches_the_shared_values_and_has_codes_and_colours():
    assert {s.name: s.value for s in LABEL_TABLE} == {k: v for k, v in LABELS.items() if v}
    assert NUM_CLASSES == 9
    for spec in LABEL_TABLE:
        assert spec.type[1] == "SCT" and spec.type[0].isdigit() and spec.category[0].isdigit()
        assert all(0 <= c <= 255 for c in spec.color)
    assert {s.name for s in LABEL_TABLE if s.experimental} == {"heart", "aorta", "liver"}
    assert len({s.color for s in LABEL_TABLE}) == len(LABEL_TABLE)


@pytest.fixture(scope="module")
def phantom_ref():
    ph = make_phantom((96, 128, 128), (2.5, 2.5, 2.5), seed=3)
    return ph, reference_labels(ph.hu, ph.spacing)


def test_reference_labeller_recovers_phantom_body_lungs_and_bone(phantom_ref):
    ph, ref = phantom_ref
    truth, lab = ph.labels, ref.labels
    assert dice(lab > 0, truth > 0) > 0.97  # body includes everything inside the skin; the table is not body
    assert dice(lab == VALUE["lung_left"], truth == LABELS["lung_left"]) > 0.85
    assert dice(lab == VALUE["lung_right"], truth == LABELS["lung_right"]) > 0.85
    assert dice(lab == VALUE["bone"], truth == LABELS["bone"]) > 0.6
    assert ref.labelled.all() and {0, 1, 2, 3, 4} <= ref.known


def test_reference_labeller_finds_the_trachea_by_region_growing(phantom_ref):
    ph, ref = phantom_ref
    airway = ref.labels == VALUE["airway"]
    assert VALUE["airway"] in ref.known
    assert airway.sum() > 50
    assert (ph.labels[airway] == LABELS["airway"]).mean() > 0.6


def test_collapsed_lung_is_marked_unlabelled_not_background():
    ph = make_phantom((96, 128, 128), (2.5, 2.5, 2.5), seed=3)
    hu = ph.hu.copy()
    hu[ph.labels == LABELS["lung_right"]] = 30  # consolidated: soft-tissue density
    ref = reference_labels(hu, ph.spacing)
    right = ph.labels == LABELS["lung_right"]
    assert (ref.labels[right] == VALUE["lung_right"]).mean() < 0.2  # the rules cannot see it ...
    assert (~ref.labelled[right]).mean() > 0.8  # ... so they say nothing there
    assert ref.labelled[ph.labels == LABELS["lung_left"]].all()


@pytest.mark.slow
def test_reference_labels_on_real_chest_ct_mark_the_opacified_right_lung():
    from appliance.inference.grid import grid_of, lps_grid, resample
    from dicom_node.volume import assemble_volume

    case = shared_case("lidc_idri_0314_chest_1mm")
    vol = assemble_volume(sorted((case / "ct_dicom").glob("*.dcm")))
    grid = lps_grid(grid_of(vol.array, vol.affine), (3.0, 3.0, 3.0))
    hu = resample(vol.array, vol.affine, grid)
    ref = reference_labels(hu, grid.spacing)
    ml = 27.0 / 1000.0
    left = (ref.labels == VALUE["lung_left"]).sum() * ml
    right = (ref.labels == VALUE["lung_right"]).sum() * ml
    assert 1200 < left < 3500 and right < 0.6 * left
    assert (~ref.labelled).sum() * ml > 300  # the opacified right side is unlabelled
    assert (ref.labels == VALUE["airway"]).sum() * ml > 5
    body = (ref.labels > 0).sum() * ml
    assert 8000 < body < 30000
