"""Radiology-style report text for one breast, generated from the ground truth.

The wording is deliberately varied (several phrasings per concept, varied section headers, some
reports without headers) so that a report parser or a text encoder cannot rely on one template.
Reports never contain identifiers; the only patient attribute they may mention is the age.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .phantom import LesionSpec

__all__ = ["BIRADS_WORDS", "DENSITY_SENTENCES", "make_report"]

BIRADS_WORDS: dict[int, str] = {
    0: "Incomplete. Additional imaging evaluation is needed",
    1: "Negative",
    2: "Benign",
    3: "Probably benign. Short-interval follow-up is suggested",
    4: "Suspicious abnormality. Biopsy should be considered",
    5: "Highly suggestive of malignancy. Appropriate action should be taken",
    6: "Known biopsy-proven malignancy",
}

DENSITY_SENTENCES: dict[str, tuple[str, ...]] = {
    "A": (
        "The breast is almost entirely fatty.",
        "The {side} breast is almost entirely fatty.",
        "Breast tissue is almost entirely fatty (ACR density A).",
        "The breast tissue is predominantly fatty.",
    ),
    "B": (
        "There are scattered areas of fibroglandular density.",
        "Scattered areas of fibroglandular density are present in the {side} breast.",
        "The breast tissue shows scattered fibroglandular densities (ACR density B).",
        "Scattered fibroglandular tissue is noted.",
    ),
    "C": (
        "The breast tissue is heterogeneously dense, which may obscure small masses.",
        "The {side} breast is heterogeneously dense, which could obscure small masses.",
        "Heterogeneously dense breast tissue (ACR density C), which may obscure small masses.",
        "The breasts are heterogeneously dense; this may lower the sensitivity of mammography.",
    ),
    "D": (
        "The breast tissue is extremely dense, which lowers the sensitivity of mammography.",
        "The {side} breast is extremely dense, which reduces mammographic sensitivity.",
        "Extremely dense breast tissue (ACR density D), lowering the sensitivity of mammography.",
        "The breasts are extremely dense, which lowers the sensitivity of mammography.",
    ),
}

_HISTORY = (
    "Screening.",
    "Routine screening mammogram.",
    "Annual screening. No current breast complaints.",
    "{age}-year-old woman presenting for screening mammography.",
    "Screening examination. Family history of breast cancer.",
    "Asymptomatic {age}-year-old patient, routine screening.",
    "Baseline screening mammogram.",
)
_COMPARISON = (
    "None.",
    "No prior studies available for comparison.",
    "Prior examinations were reviewed.",
    "Compared with the prior screening examination.",
    "Outside films were not available.",
)
_TECHNIQUE = (
    "Standard craniocaudal and mediolateral oblique views of both breasts were obtained.",
    "Bilateral digital mammography, CC and MLO views.",
    "Full-field digital mammography with standard CC and MLO projections.",
    "Digital screening mammography was performed. Computer-aided detection was used.",
)
_REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "upper outer": ("upper outer quadrant",),
    "upper inner": ("upper inner quadrant",),
    "lower outer": ("lower outer quadrant",),
    "lower inner": ("lower inner quadrant",),
    "central": ("central breast", "central region"),
    "subareolar": ("subareolar region", "retroareolar region"),
}
_DEPTH_PHRASES: dict[str, tuple[str, ...]] = {
    "anterior": ("at anterior depth", "in the anterior third", "anterior depth"),
    "mid": ("at mid depth", "in the middle third", "middle depth"),
    "posterior": ("at posterior depth", "in the posterior third", "posterior depth"),
}
_NO_FINDINGS = (
    "No suspicious mass, calcification or architectural distortion.",
    "There is no dominant mass, suspicious cluster of microcalcifications, or architectural distortion.",
    "No suspicious masses, calcifications, or areas of architectural distortion are seen in the {side} breast.",
    "No mass, suspicious calcification or distortion is identified.",
)
_NO_MASS = (
    "No suspicious mass.",
    "There is no dominant mass.",
    "No other mass or architectural distortion is seen.",
    "No suspicious mass or architectural distortion is identified.",
)
_NO_CALC = (
    "No suspicious calcifications.",
    "There are no suspicious microcalcifications.",
    "No suspicious calcifications are seen.",
    "No grouped microcalcifications.",
)
_FILLER = (
    "The skin and nipple are unremarkable.",
    "No axillary adenopathy is seen.",
    "The skin is not thickened.",
    "Stable benign-appearing intramammary lymph node in the upper outer quadrant.",
)
_RECOMMENDATION: dict[int, tuple[str, ...]] = {
    1: ("Routine screening mammography in 1 year.", "Continue annual screening."),
    2: ("Routine screening mammography in 1 year.", "Annual screening mammography is recommended."),
    3: ("Short-interval follow-up mammogram in 6 months.", "Unilateral diagnostic mammogram in 6 months."),
    4: (
        "Ultrasound-guided biopsy is recommended.",
        "Tissue sampling is recommended.",
        "Stereotactic biopsy is recommended.",
    ),
    5: (
        "Biopsy and surgical consultation are recommended.",
        "Tissue diagnosis is recommended. Appropriate action should be taken.",
    ),
}
_HEADER_NAMES = {
    "history": ("CLINICAL HISTORY", "HISTORY", "INDICATION", "CLINICAL INFORMATION"),
    "comparison": ("COMPARISON",),
    "technique": ("TECHNIQUE", "PROCEDURE"),
    "findings": ("FINDINGS",),
    "impression": ("IMPRESSION",),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS"),
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _where(rng: np.random.Generator, lesion: LesionSpec, side: str, laterality: str) -> tuple[str, str, str]:
    """Region phrase, depth phrase and an optional clock-face phrase for one lesion."""
    region = _pick(rng, _REGION_PHRASES[lesion.region])
    depth = _pick(rng, _DEPTH_PHRASES[lesion.depth])
    clock = ""
    if lesion.region != "subareolar" and rng.random() < 0.4:
        hour = lesion.clock(laterality)
        clock = _pick(rng, (f" at the {hour} o'clock position", f" at {hour} o'clock"))
    return region, depth, clock


def _mass_sentence(rng: np.random.Generator, lesion: LesionSpec, side: str, laterality: str) -> str:
    """One FINDINGS sentence describing a mass."""
    region, depth, clock = _where(rng, lesion, side, laterality)
    shape = "irregular" if lesion.shape == "spiculated" else lesion.shape
    margin = lesion.margin or ("spiculated" if lesion.shape == "spiculated" else "circumscribed")
    size = f"{lesion.size_mm:.0f}"
    art = "an" if shape[0] in "aeiou" else "a"
    place = f"the {region} of the {side} breast{clock}"  # e.g. "the upper outer quadrant of the left breast"
    listed = f"the {side} breast, {region}{clock}, {depth}"
    templates = (
        f"There is a {size} mm {shape} mass with {margin} margins in {place}, {depth}.",
        f"{art.capitalize()} {shape} {margin} mass measuring {size} mm is seen in {listed}.",
        f"{side.capitalize()} breast: {shape} mass with {margin} margins, {size} mm, {region}{clock}, {depth}.",
        f"In {place}, {depth}, there is {art} {shape} mass with {margin} margins measuring {size} mm.",
    )
    return _pick(rng, templates)


def _calc_sentence(rng: np.random.Generator, lesion: LesionSpec, side: str, laterality: str) -> str:
    """One FINDINGS sentence describing a cluster of suspicious calcifications."""
    region, depth, clock = _where(rng, lesion, side, laterality)
    morph = lesion.morphology or "pleomorphic"
    size = f"{lesion.size_mm:.0f}"
    place = f"the {region} of the {side} breast{clock}"
    fine = "" if morph.startswith("fine") else "fine "
    templates = (
        f"A cluster of {fine}{morph} calcifications spanning {size} mm is present in {place}, {depth}.",
        f"Grouped {morph} microcalcifications are seen in the {side} breast, {region}{clock}, {depth}, "
        f"extending over {size} mm.",
        f"There are suspicious clustered {morph} calcifications in {place} measuring {size} mm, {depth}.",
        f"{side.capitalize()} breast {region}{clock}: {size} mm group of {morph} calcifications, {depth}.",
    )
    return _pick(rng, templates)


def _impression_summary(rng: np.random.Generator, lesions: Sequence[LesionSpec], side: str) -> list[str]:
    if not lesions:
        return [
            _pick(
                rng,
                (
                    f"No mammographic evidence of malignancy in the {side} breast.",
                    f"Negative {side} mammogram.",
                    "No suspicious findings.",
                ),
            )
        ]
    out = []
    for lesion in lesions:
        region = _REGION_PHRASES[lesion.region][0]
        if lesion.kind == "mass":
            what = f"{lesion.size_mm:.0f} mm {lesion.shape} mass"
        else:
            what = f"{lesion.morphology or 'suspicious'} calcifications"
        out.append(
            _pick(
                rng,
                (
                    f"{what.capitalize()}, {side} breast, {region}.",
                    f"{what.capitalize()} in the {region} of the {side} breast.",
                ),
            )
        )
    return out


def _birads_sentence(rng: np.random.Generator, birads: int) -> str:
    words = BIRADS_WORDS[birads]
    return _pick(
        rng,
        (
            f"BI-RADS {birads}: {words}.",
            f"BI-RADS category {birads} - {words}.",
            f"ACR BI-RADS {birads}: {words}.",
            f"Assessment: BI-RADS {birads}. {words}.",
        ),
    )


def _findings(
    rng: np.random.Generator, laterality: str, density: str, lesions: Sequence[LesionSpec], birads: int
) -> list[str]:
    side = "left" if laterality == "L" else "right"
    out = [_pick(rng, DENSITY_SENTENCES[density]).format(side=side)]
    for lesion in lesions:
        make = _mass_sentence if lesion.kind == "mass" else _calc_sentence
        out.append(make(rng, lesion, side, laterality))
    has_mass = any(x.kind == "mass" for x in lesions)
    has_calc = any(x.kind == "calcification" for x in lesions)
    if not lesions:
        out.append(_pick(rng, _NO_FINDINGS).format(side=side))
    elif not has_mass:
        out.append(_pick(rng, _NO_MASS))
    elif not has_calc:
        out.append(_pick(rng, _NO_CALC))
    if birads == 2 and not lesions:
        out.append(_FILLER[3])
    elif rng.random() < 0.3:
        out.append(_pick(rng, _FILLER[:3]))
    return out


def _header(rng: np.random.Generator, key: str, style: str) -> str:
    name = _pick(rng, _HEADER_NAMES[key])
    return {"upper_colon": f"{name}:", "title_colon": f"{name.title()}:", "lower": name.lower(), "upper": name}[style]


def make_report(
    rng: np.random.Generator,
    laterality: str,
    density: str,
    lesions: Sequence[LesionSpec],
    birads: int,
    age: int | None = None,
) -> str:
    """Report for one breast: noise sections, FINDINGS and IMPRESSION (sometimes RECOMMENDATION)."""
    side = "left" if laterality == "L" else "right"
    findings = _findings(rng, laterality, density, lesions, birads)
    impression = _impression_summary(rng, lesions, side) + [_birads_sentence(rng, birads)]
    if rng.random() < 0.05:  # no section headers at all
        return " ".join(findings + impression)
    age_text = str(age) if age is not None else "50"
    sections: list[tuple[str, list[str]]] = []
    if rng.random() < 0.7:
        sections.append(("history", [_pick(rng, _HISTORY).format(age=age_text)]))
    if rng.random() < 0.5:
        sections.append(("comparison", [_pick(rng, _COMPARISON)]))
    if rng.random() < 0.5:
        sections.append(("technique", [_pick(rng, _TECHNIQUE)]))
    sections.append(("findings", findings))
    sections.append(("impression", impression))
    if rng.random() < 0.4:
        sections.append(("recommendation", [_pick(rng, _RECOMMENDATION[max(1, min(5, birads))])]))
    style = _pick(rng, ("upper_colon", "upper_colon", "title_colon", "lower", "upper"))
    inline = rng.random() < 0.5 and style in ("upper_colon", "title_colon")
    sep = "\n" if rng.random() < 0.5 else "\n\n"
    blocks = []
    for key, sentences in sections:
        head, body = _header(rng, key, style), " ".join(sentences)
        blocks.append(f"{head} {body}" if inline else f"{head}\n{body}")
    return sep.join(blocks)
