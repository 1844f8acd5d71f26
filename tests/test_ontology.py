import numpy as np
import pytest

from shared_models.ontology import available_label_sets, available_sources, load_label_set, load_source_map


def test_label_sets():
    ls = load_label_set("cxrlt2026")
    assert (len(ls.seen), len(ls.zeroshot)) == (30, 6)
    assert ls.classes[19] == "pneumoperitoneo" and "goiter" in ls.zeroshot
    assert (len(load_label_set("cxrlt2024").seen), len(load_label_set("cxrlt2024").zeroshot)) == (40, 5)
    assert len(load_label_set("ctrate18").seen) == 18
    assert set(available_label_sets()) >= {"cxrlt2026", "cxrlt2024", "ctrate18"}


def test_lookup_is_case_and_space_insensitive():
    ls = load_label_set()
    assert ls.index("  PLEURAL   Effusion ") == ls.index("pleural effusion")
    with pytest.raises(KeyError):
        ls.index("not a class")


@pytest.mark.parametrize("source", ["padchest", "mimic", "nih", "openi"])
def test_every_source_map_loads(source):
    smap = load_source_map(source)
    assert smap.annotated.any()
    assert source in available_sources()


def test_encode_targets_mask_and_unmapped():
    smap = load_source_map("mimic")
    ls = smap.label_set
    target, mask, unmapped = smap.encode(["Cardiomegaly", "Lung Opacity", "Made Up"], uncertain=["Pneumothorax"])
    assert target[ls.index("cardiomegaly")] == 1 and mask[ls.index("cardiomegaly")] == 1
    assert mask[ls.index("Pneumothorax")] == 0  # uncertain -> unknown
    assert mask[ls.index("Nodule")] == 0  # MIMIC's labeler cannot express it
    assert mask[ls.index("pleural effusion")] == 1 and target[ls.index("pleural effusion")] == 0
    assert unmapped == ["Made Up"]  # "Lung Opacity" is deliberately unmapped, not unknown


def test_one_term_can_map_to_two_classes():
    smap = load_source_map("padchest")
    ls = smap.label_set
    target, _, _ = smap.encode(["central venous catheter via jugular vein"])
    assert target[ls.index("central venous catheter")] == 1 and target[ls.index("Support Devices")] == 1
    assert np.count_nonzero(target) == 2
