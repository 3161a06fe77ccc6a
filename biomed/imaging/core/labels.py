"""The canonical finding vocabulary, and each real dataset's labels mapped onto it.

One vocabulary of chest radiograph findings (snake_case) is shared by the phantom renderer, the
classifiers, the diffusion evaluation and the augmentation loop. It lists what a radiograph shows
(and the phantom can draw), not diagnoses that need a clinical context; ``pneumonia`` and
``fracture`` are the two exceptions kept because every labelled dataset carries them.

Side-specific findings are their own columns (``effusion_left``, ``effusion_right``,
``pneumothorax_left``, ``pneumothorax_right``) next to a side-agnostic parent (``effusion``,
``pneumothorax``): most datasets say *that* there is an effusion but not *where*, and a
classifier trained on them needs the parent, while the phantom and prompt-fidelity checks need
the sides. The parent is the logical OR of its sides (`complete_sides`).

Real datasets keep their own label names as their primary labels; the mappings below turn them
into canonical columns on request (``labels="canonical"`` in `biomed.imaging.data.files`).
Values follow three-valued logic: 1 (present), 0 (absent), NaN (unknown). A canonical column
with no source label in a dataset is NaN for that dataset, never a silent 0. Several source labels
mapped to one canonical column combine as an OR: 1 if any is 1, 0 if all are 0, else NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CANONICAL",
    "CANONICAL_NAMES",
    "CHEXPERT_LABELS",
    "CHEXPERT_TO_CANONICAL",
    "IU_MESH_TO_CANONICAL",
    "MIMIC_CHEXPERT_LABELS",
    "NIH_LABELS",
    "NIH_TO_CANONICAL",
    "PADCHEST_LABELS",
    "PADCHEST_SIDED_LABELS",
    "PADCHEST_TO_CANONICAL",
    "SIDED",
    "VINDR_LABELS",
    "VINDR_TO_CANONICAL",
    "CanonicalFinding",
    "canonical_from_sets",
    "complete_no_finding",
    "complete_sides",
    "map_to_canonical",
    "mapped_targets",
    "side_values",
]


@dataclass(frozen=True)
class CanonicalFinding:
    """One canonical column: its name, what it means, and whether the phantom renders it."""

    name: str
    description: str
    phantom: bool = True  # the phantom renderer draws it (False: a label it always sets to 0)
    parent: str | None = None  # for a side column, its side-agnostic parent


CANONICAL: tuple[CanonicalFinding, ...] = (
    CanonicalFinding("no_finding", "no pathology (support devices allowed), as CheXpert's "
                     "'No Finding'; 0 as soon as any pathology column is 1"),
    CanonicalFinding("cardiomegaly", "enlarged cardiac silhouette (cardiothoracic ratio > 0.5 on "
                     "a PA view)"),
    CanonicalFinding("effusion", "pleural effusion on either side"),
    CanonicalFinding("effusion_left", "left pleural effusion (blunted costophrenic angle, "
                     "meniscus)", parent="effusion"),
    CanonicalFinding("effusion_right", "right pleural effusion", parent="effusion"),
    CanonicalFinding("pneumothorax", "pneumothorax on either side"),
    CanonicalFinding("pneumothorax_left", "left pneumothorax (visceral pleural line, no lung "
                     "markings beyond it)", parent="pneumothorax"),
    CanonicalFinding("pneumothorax_right", "right pneumothorax", parent="pneumothorax"),
    CanonicalFinding("nodule", "pulmonary nodule (< 3 cm), not calcified granuloma"),
    CanonicalFinding("calcified_granuloma", "calcified granuloma (small, dense, well defined)"),
    CanonicalFinding("mass", "pulmonary mass (>= 3 cm)"),
    CanonicalFinding("consolidation", "consolidation / focal airspace opacity"),
    CanonicalFinding("atelectasis", "atelectasis (linear, segmental or lobar volume loss)"),
    CanonicalFinding("edema", "pulmonary oedema (interstitial or alveolar)"),
    CanonicalFinding("emphysema", "hyperinflation / emphysema (flattened diaphragms, "
                     "hyperlucent lungs)"),
    CanonicalFinding("low_lung_volumes", "low lung volumes / hypoinflation"),
    CanonicalFinding("pneumonia", "pneumonia: a clinical diagnosis, not a sign", phantom=False),
    CanonicalFinding("fracture", "bone fracture (ribs, clavicle, spine)", phantom=False),
    CanonicalFinding("support_devices", "lines, tubes, pacemakers and other support devices"),
)
CANONICAL_NAMES: tuple[str, ...] = tuple(f.name for f in CANONICAL)

# parent -> (left column, right column)
SIDED: dict[str, tuple[str, str]] = {
    "effusion": ("effusion_left", "effusion_right"),
    "pneumothorax": ("pneumothorax_left", "pneumothorax_right"),
}
# Columns that are not pathologies: a 1 there does not contradict ``no_finding``.
_NOT_PATHOLOGY = frozenset({"no_finding", "support_devices"})

# ---------------------------------------------------------------------------------------------
# CheXpert and MIMIC-CXR: the 14 observations of the CheXpert labeler (Irvin et al., AAAI 2019,
# github.com/stanfordmlgroup/chexpert-labeler). CheXpert's train.csv/valid.csv list them in this
# order; MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv lists the same names alphabetically.
# Values: 1.0 positive, 0.0 negative, -1.0 uncertain, blank = not mentioned.

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
MIMIC_CHEXPERT_LABELS: tuple[str, ...] = tuple(sorted(CHEXPERT_LABELS))

CHEXPERT_TO_CANONICAL: dict[str, tuple[str, ...]] = {
    "No Finding": ("no_finding",),
    "Cardiomegaly": ("cardiomegaly",),
    "Edema": ("edema",),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",),  # no side in the labeler: the side columns stay NaN
    "Pleural Effusion": ("effusion",),
    "Fracture": ("fracture",),
    "Support Devices": ("support_devices",),
    # Not mapped, on purpose: "Lung Opacity" is a superset (consolidation, oedema, atelectasis,
    # lesions...), "Lung Lesion" lumps nodules and masses, "Enlarged Cardiomediastinum" is
    # broader than cardiomegaly, "Pleural Other" is thickening/plaques. Mapping any of them onto
    # a narrower canonical column would invent positives.
    "Enlarged Cardiomediastinum": (),
    "Lung Opacity": (),
    "Lung Lesion": (),
    "Pleural Other": (),
}

# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14 (Wang et al., CVPR 2017): "Finding Labels" in Data_Entry_2017_v2020.csv is a
# "|"-joined list of these 14 names, or "No Finding". Spelling as in the file, including
# "Pleural_Thickening" with its underscore. Text-mined labels: every listed finding is 1, every
# other one 0 (there is no uncertain value).

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia", "No Finding",
)

NIH_TO_CANONICAL: dict[str, tuple[str, ...]] = {
    "No Finding": ("no_finding",),
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("effusion",),
    "Mass": ("mass",),
    "Nodule": ("nodule",),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Emphysema": ("emphysema",),
    # Not mapped: "Infiltration" (non-specific opacity), "Fibrosis", "Pleural_Thickening",
    # "Hernia" (hiatal) have no canonical column.
    "Infiltration": (),
    "Fibrosis": (),
    "Pleural_Thickening": (),
    "Hernia": (),
}

# ---------------------------------------------------------------------------------------------
# PadChest (Bustos et al., Medical Image Analysis 2020): the "Labels" column of
# PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv holds a Python list literal of these
# strings. This is every distinct label in the real 160,861-row file after stripping the
# leading blanks the file has on many of them (' pneumonia'): 193 labels, among them the
# non-findings 'normal', 'exclude', 'suboptimal study' and 'unchanged', kept as the file has them.

PADCHEST_LABELS: tuple[str, ...] = (
    "COPD signs", "Chilaiditi sign", "NSG tube", "abnormal foreign body", "abscess",
    "adenopathy", "air bronchogram", "air fluid level", "air trapping", "alveolar pattern",
    "aortic aneurysm", "aortic atheromatosis", "aortic button enlargement", "aortic elongation",
    "aortic endoprosthesis", "apical pleural thickening", "artificial aortic heart valve",
    "artificial heart valve", "artificial mitral heart valve", "asbestosis signs",
    "ascendent aortic elongation", "atelectasis", "atelectasis basal", "atypical pneumonia",
    "axial hyperostosis", "azygoesophageal recess shift", "azygos lobe", "blastic bone lesion",
    "bone cement", "bone metastasis", "breast mass", "bronchiectasis",
    "bronchovascular markings", "bullas", "calcified adenopathy", "calcified densities",
    "calcified fibroadenoma", "calcified granuloma", "calcified mediastinal adenopathy",
    "calcified pleural plaques", "calcified pleural thickening", "callus rib fracture",
    "cardiomegaly", "catheter", "cavitation", "central vascular redistribution",
    "central venous catheter", "central venous catheter via jugular vein",
    "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
    "cervical rib", "chest drain tube", "chronic changes", "clavicle fracture", "consolidation",
    "costochondral junction hypertrophy", "costophrenic angle blunting", "cyst", "dai",
    "descendent aortic elongation", "dextrocardia", "diaphragmatic eventration",
    "double J stent", "dual chamber device", "electrical device", "emphysema", "empyema",
    "end on vessel", "endoprosthesis", "endotracheal tube", "esophagic dilatation", "exclude",
    "external foreign body", "fibrotic band", "fissure thickening", "flattened diaphragm",
    "fracture", "gastrostomy tube", "goiter", "granuloma", "ground glass pattern",
    "gynecomastia", "heart insufficiency", "heart valve calcified", "hemidiaphragm elevation",
    "hiatal hernia", "hilar congestion", "hilar enlargement", "humeral fracture",
    "humeral prosthesis", "hydropneumothorax", "hyperinflated lung", "hypoexpansion",
    "hypoexpansion basal", "increased density", "infiltrates", "interstitial pattern",
    "kerley lines", "kyphosis", "laminar atelectasis", "lepidic adenocarcinoma", "lipomatosis",
    "lobar atelectasis", "loculated fissural effusion", "loculated pleural effusion",
    "lung metastasis", "lung vascular paucity", "lymphangitis carcinomatosa",
    "lytic bone lesion", "major fissure thickening", "mammary prosthesis", "mass",
    "mastectomy", "mediastinal enlargement", "mediastinal mass", "mediastinal shift",
    "mediastinic lipomatosis", "metal", "miliary opacities", "minor fissure thickening",
    "multiple nodules", "nephrostomy tube", "nipple shadow", "nodule",
    "non axial articular degenerative changes", "normal", "obesity", "osteopenia",
    "osteoporosis", "osteosynthesis material", "pacemaker", "pectum carinatum",
    "pectum excavatum", "pericardial effusion", "pleural effusion", "pleural mass",
    "pleural plaques", "pleural thickening", "pneumomediastinum", "pneumonia",
    "pneumoperitoneo", "pneumothorax", "post radiotherapy changes", "prosthesis",
    "pseudonodule", "pulmonary artery enlargement", "pulmonary artery hypertension",
    "pulmonary edema", "pulmonary fibrosis", "pulmonary hypertension", "pulmonary mass",
    "pulmonary venous hypertension", "reservoir central venous catheter",
    "respiratory distress", "reticular interstitial pattern",
    "reticulonodular interstitial pattern", "rib fracture", "right sided aortic arch",
    "round atelectasis", "sclerotic bone lesion", "scoliosis", "segmental atelectasis",
    "single chamber device", "soft tissue mass", "sternoclavicular junction hypertrophy",
    "sternotomy", "subacromial space narrowing", "subcutaneous emphysema", "suboptimal study",
    "superior mediastinal enlargement", "supra aortic elongation", "surgery", "surgery breast",
    "surgery heart", "surgery humeral", "surgery lung", "surgery neck", "suture material",
    "thoracic cage deformation", "total atelectasis", "tracheal shift", "tracheostomy tube",
    "tuberculosis", "tuberculosis sequelae", "unchanged", "vascular hilar enlargement",
    "vascular redistribution", "ventriculoperitoneal drain tube",
    "vertebral anterior compression", "vertebral compression", "vertebral degenerative changes",
    "vertebral fracture", "volume loss",
)

# Only labels that name the canonical finding itself; the PadChest hierarchy's vaguer signs
# ('infiltrates', 'alveolar pattern', 'costophrenic angle blunting', 'COPD signs',
# 'pseudonodule', 'granuloma' without 'calcified', 'volume loss') are left out rather than
# guessed. Labels not listed here map to nothing.
PADCHEST_TO_CANONICAL: dict[str, tuple[str, ...]] = {
    "normal": ("no_finding",),
    "cardiomegaly": ("cardiomegaly",),
    "pleural effusion": ("effusion",),
    "loculated pleural effusion": ("effusion",),
    "hydropneumothorax": ("effusion", "pneumothorax"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule",),
    "multiple nodules": ("nodule",),
    "calcified granuloma": ("calcified_granuloma",),
    "mass": ("mass",),
    "pulmonary mass": ("mass",),
    "consolidation": ("consolidation",),
    "atelectasis": ("atelectasis",),
    "atelectasis basal": ("atelectasis",),
    "laminar atelectasis": ("atelectasis",),
    "lobar atelectasis": ("atelectasis",),
    "segmental atelectasis": ("atelectasis",),
    "round atelectasis": ("atelectasis",),
    "total atelectasis": ("atelectasis",),
    "pulmonary edema": ("edema",),
    "emphysema": ("emphysema",),
    "hyperinflated lung": ("emphysema",),
    "hypoexpansion": ("low_lung_volumes",),
    "hypoexpansion basal": ("low_lung_volumes",),
    "pneumonia": ("pneumonia",),
    "atypical pneumonia": ("pneumonia",),
    "fracture": ("fracture",),
    "rib fracture": ("fracture",),
    "callus rib fracture": ("fracture",),
    "clavicle fracture": ("fracture",),
    "humeral fracture": ("fracture",),
    "vertebral fracture": ("fracture",),
    # support devices: lines, tubes, cardiac devices (CheXpert's "Support Devices" sense)
    "NSG tube": ("support_devices",),
    "endotracheal tube": ("support_devices",),
    "tracheostomy tube": ("support_devices",),
    "chest drain tube": ("support_devices",),
    "gastrostomy tube": ("support_devices",),
    "catheter": ("support_devices",),
    "central venous catheter": ("support_devices",),
    "central venous catheter via jugular vein": ("support_devices",),
    "central venous catheter via subclavian vein": ("support_devices",),
    "central venous catheter via umbilical vein": ("support_devices",),
    "reservoir central venous catheter": ("support_devices",),
    "pacemaker": ("support_devices",),
    "single chamber device": ("support_devices",),
    "dual chamber device": ("support_devices",),
    "electrical device": ("support_devices",),
    "dai": ("support_devices",),  # implantable defibrillator (DAI in Spanish)
    "artificial heart valve": ("support_devices",),
    "artificial aortic heart valve": ("support_devices",),
    "artificial mitral heart valve": ("support_devices",),
}
# The sentence-level labels of PadChest's physician-labelled rows carry a side in the label
# itself ('pleural effusion left side'); other effusion sentences carry 'loc left/right/bilateral'.
PADCHEST_SIDED_LABELS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("effusion",),
    "loculated pleural effusion": ("effusion",),
    "hydropneumothorax": ("effusion", "pneumothorax"),
    "pneumothorax": ("pneumothorax",),
}

# ---------------------------------------------------------------------------------------------
# VinDr-CXR (Nguyen et al., Scientific Data 2022), class_name of vinbigdata-train.csv (the
# Kaggle VinBigData release: one row per radiologist box; "No finding" has no box).

VINDR_LABELS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation",
    "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding",
)
VINDR_TO_CANONICAL: dict[str, tuple[str, ...]] = {
    "No finding": ("no_finding",),
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation",),
    "Pleural effusion": ("effusion",),
    "Pneumothorax": ("pneumothorax",),
    # "Nodule/Mass" lumps two canonical columns, "Calcification" is not only granulomas,
    # "Lung Opacity"/"Infiltration"/"ILD" are unspecific: not mapped.
    "Nodule/Mass": (),
    "Calcification": (),
    "Aortic enlargement": (),
    "ILD": (),
    "Infiltration": (),
    "Lung Opacity": (),
    "Other lesion": (),
    "Pleural thickening": (),
    "Pulmonary fibrosis": (),
}

# ---------------------------------------------------------------------------------------------
# IU / OpenI reports: MeSH major tags (biomed.imaging.reports.iu.Finding). A key is a MeSH term,
# or "Term/modifier" when the modifier is what makes the finding ('Lung/hypoinflation').
# Side comes from Finding.side. 'normal' is the tag of a report read as normal.

IU_MESH_TO_CANONICAL: dict[str, tuple[str, ...]] = {
    "normal": ("no_finding",),
    "Cardiomegaly": ("cardiomegaly",),
    "Cardiac Shadow/enlarged": ("cardiomegaly",),
    "Pleural Effusion": ("effusion",),
    "Hydropneumothorax": ("effusion", "pneumothorax"),
    "Pneumothorax": ("pneumothorax",),
    "Hemopneumothorax": ("pneumothorax",),
    "Nodule": ("nodule",),
    "Calcified Granuloma": ("calcified_granuloma",),
    "Mass": ("mass",),
    "Consolidation": ("consolidation",),
    "Airspace Disease": ("consolidation",),
    "Pulmonary Atelectasis": ("atelectasis",),
    "Pulmonary Edema": ("edema",),
    "Emphysema": ("emphysema",),
    "Pulmonary Emphysema": ("emphysema",),
    "Bullous Emphysema": ("emphysema",),
    "Lung/hyperdistention": ("emphysema",),
    "Lung/hypoinflation": ("low_lung_volumes",),
    "Pneumonia": ("pneumonia",),
    "Fractures, Bone": ("fracture",),
    "Catheters, Indwelling": ("support_devices",),
    "Implanted Medical Device": ("support_devices",),
    "Medical Device": ("support_devices",),
    "Tube, Inserted": ("support_devices",),
}


# ---------------------------------------------------------------------------------------------
# mapping


def _or(values: np.ndarray) -> np.ndarray:
    """Three-valued OR along axis 1: 1 if any 1, 0 if all 0, else NaN."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan, np.float32)
    out = np.full(values.shape[0], np.nan, np.float32)
    out[np.all(values == 0, axis=1)] = 0.0
    out[np.any(values == 1, axis=1)] = 1.0
    return out


def map_to_canonical(labels: np.ndarray, names: Sequence[str],
                     mapping: Mapping[str, Iterable[str]]) -> np.ndarray:
    """Turn a dataset's N x K label matrix into the N x len(CANONICAL_NAMES) canonical one.

    Canonical columns with no source are NaN; several sources combine with a three-valued OR;
    sides and ``no_finding`` are then completed from what is known (`complete_sides`,
    `complete_no_finding`). Uncertain values must already be resolved (1/0/NaN only).
    """
    labels = np.asarray(labels, dtype=np.float32)
    index = {n: i for i, n in enumerate(names)}
    sources: dict[str, list[int]] = {c: [] for c in CANONICAL_NAMES}
    for src, targets in mapping.items():
        if src not in index:
            continue
        for t in targets:
            if t not in sources:
                raise KeyError(f"mapping targets unknown canonical label {t!r}")
            sources[t].append(index[src])
    out = np.full((labels.shape[0], len(CANONICAL_NAMES)), np.nan, np.float32)
    for j, c in enumerate(CANONICAL_NAMES):
        if sources[c]:
            out[:, j] = _or(labels[:, sources[c]])
    return complete_no_finding(complete_sides(out))


def complete_sides(canon: np.ndarray) -> np.ndarray:
    """Make each side-agnostic parent consistent with its side columns (in place; returned).

    The parent is the OR of its sides where that is known (a positive side makes it 1, two
    negative sides make it 0); a negative parent makes both sides 0. A positive parent with no
    side information leaves the sides NaN: the effusion is real, its side unknown.
    """
    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    for parent, (left, right) in SIDED.items():
        p = col[parent]
        derived = _or(canon[:, [col[left], col[right]]])
        fill = np.isnan(canon[:, p]) & ~np.isnan(derived)
        canon[fill, p] = derived[fill]
        canon[derived == 1, p] = 1.0  # a positive side wins over a contradicting parent
        neg = canon[:, p] == 0
        canon[neg, col[left]] = 0.0
        canon[neg, col[right]] = 0.0
    return canon


def complete_no_finding(canon: np.ndarray) -> np.ndarray:
    """Set ``no_finding`` to 0 where any pathology column is 1 (in place; returned).

    CheXpert leaves 'No Finding' blank rather than 0 when a finding is present, and PadChest
    has rows labelled both 'normal' and e.g. 'cardiomegaly': a positive finding wins.
    """
    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    path = [i for n, i in col.items() if n not in _NOT_PATHOLOGY]
    canon[np.any(canon[:, path] == 1, axis=1), col["no_finding"]] = 0.0
    return canon


def side_values(mentions: Sequence[str | None]) -> tuple[float, float]:
    """(left, right) of one finding from its mentions, each 'left', 'right', 'bilateral' or None.

    No mention: both 0. All mentions sided: the named sides are 1, the others 0. Any mention
    without a side: the named sides are 1, the others unknown (NaN).
    """
    if not mentions:
        return 0.0, 0.0
    left = any(m in ("left", "bilateral") for m in mentions)
    right = any(m in ("right", "bilateral") for m in mentions)
    other = np.nan if any(m is None for m in mentions) else 0.0
    return (1.0 if left else other), (1.0 if right else other)


def canonical_from_sets(found: Sequence[Iterable[str] | None],
                        sides: Sequence[Mapping[str, tuple[float, float]]] | None = None,
                        mapped: Iterable[str] | None = None) -> np.ndarray:
    """Canonical matrix for list-labelled datasets (each row: the canonical findings present).

    ``found[i]`` is None for an unlabelled row (all NaN); otherwise canonical columns in
    ``mapped`` (the ones the dataset can express) are 1 when found and 0 when not, the rest NaN.
    ``sides[i]`` maps a sided parent to its (left, right) values from `side_values`.
    """
    col = {n: i for i, n in enumerate(CANONICAL_NAMES)}
    mapped = set(CANONICAL_NAMES if mapped is None else mapped)
    out = np.full((len(found), len(CANONICAL_NAMES)), np.nan, np.float32)
    for i, names in enumerate(found):
        if names is None:
            continue
        names = set(names)
        for c in mapped:
            out[i, col[c]] = 1.0 if c in names else 0.0
        for parent, (lv, rv) in (sides[i] if sides is not None else {}).items():
            left, right = SIDED[parent]
            out[i, col[left]], out[i, col[right]] = lv, rv
    return complete_no_finding(complete_sides(out))


def mapped_targets(mapping: Mapping[str, Iterable[str]]) -> set[str]:
    """The canonical columns a mapping can express (the union of its targets)."""
    return {t for targets in mapping.values() for t in targets}
