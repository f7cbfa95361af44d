"""Report sections, sentence splitting, text sampling and the empty-report policies."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mammoclip_monai.text.reports import (
    EmptyReportError,
    EmptyReportPolicy,
    count_tokens,
    extract_sections,
    filter_empty_reports,
    find_sections,
    report_sentences,
    sample_texts,
    split_sentences,
    usable_sentences,
)

REPORT = """CLINICAL HISTORY: Screening. Family history: mother had breast cancer.
COMPARISON: None.
FINDINGS: The breasts are heterogeneously dense. There is a 1.5 cm oval mass in the upper outer left breast.
IMPRESSION: Suspicious mass in the left breast, BI-RADS 4.
RECOMMENDATION: Ultrasound-guided biopsy."""


# ----------------------------------------------------------------------------- sections
def test_sections_with_colons_in_upper_case():
    names = [name for name, _ in find_sections(REPORT)]
    assert names == ["history", "comparison", "findings", "impression", "recommendation"]
    text = extract_sections(REPORT)
    assert "heterogeneously dense" in text and "BI-RADS 4" in text
    assert "mother" not in text and "biopsy" not in text.lower() and "None." not in text


@pytest.mark.parametrize("report", [
    "Findings: no mass is seen here.\nImpression: negative study, bi-rads 1.\nTechnique: standard views obtained.",
    "findings - no mass is seen here.\nimpression - negative study, bi-rads 1.\ntechnique - standard views obtained.",
    "FINDINGS\nno mass is seen here.\n\nIMPRESSION\nnegative study, bi-rads 1.\nTECHNIQUE\nstandard views obtained.",
    "Findings\nno mass is seen here.\nImpressions:\nnegative study, bi-rads 1.\nTechnique:\nstandard views obtained.",
    "FINDINGS: no mass is seen here. IMPRESSION: negative study, bi-rads 1. TECHNIQUE: standard views obtained.",
    "FINDINGS: no mass is seen here IMPRESSION: negative study, bi-rads 1 TECHNIQUE: standard views obtained",
    "FINDINGS No mass is seen here. IMPRESSION Negative study, bi-rads 1. TECHNIQUE Standard views obtained.",
])
def test_sections_in_varied_layouts(report):
    text = extract_sections(report).lower()
    assert "no mass is seen here" in text and "negative study" in text
    assert "standard views" not in text


def test_inline_words_are_not_headers():
    report = "FINDINGS: There is a history of lumpectomy. Family history: sister. No prior findings of note.\n" \
             "IMPRESSION: Benign post-surgical change."
    text = extract_sections(report)
    assert "sister" in text and "history of lumpectomy" in text and "Benign" in text


def test_all_caps_report():
    report = "FINDINGS: THERE IS A MASS IN THE LEFT BREAST. HISTORY OF SURGERY IS NOTED. IMPRESSION: BIRADS 4 MASS."
    assert report_sentences(report) == ["there is a mass in the left breast.", "history of surgery is noted.",
                                        "birads 4 mass."]


def test_missing_headers_fallback():
    assert extract_sections("The breasts are fatty. No mass.") == "The breasts are fatty. No mass."
    assert extract_sections("HISTORY: screening.\nCOMPARISON: none available at all.") == ""
    assert extract_sections("") == ""
    assert report_sentences("HISTORY: screening exam for a patient.") == []


def test_wanted_sections_can_be_chosen():
    text = extract_sections(REPORT, wanted=("Impression",))
    assert text == "Suspicious mass in the left breast, BI-RADS 4."


# ----------------------------------------------------------------------------- sentences
def test_split_keeps_decimals_abbreviations_and_birads():
    text = "Mass measures 1.5 cm, e.g. oval. Approx. 2.25 mm spacing, i.e. tight. Assessment: BI-RADS 4. Next one here."
    assert split_sentences(text) == ["Mass measures 1.5 cm, e.g. oval.", "Approx. 2.25 mm spacing, i.e. tight.",
                                     "Assessment: BI-RADS 4.", "Next one here."]


def test_report_sentences_lower_case_and_drop_short_ones():
    sentences = report_sentences(REPORT)
    assert sentences == ["the breasts are heterogeneously dense.",
                         "there is a 1.5 cm oval mass in the upper outer left breast.",
                         "suspicious mass in the left breast, bi-rads 4."]
    assert report_sentences("FINDINGS: None. BI-RADS 1. No suspicious mass.\n  Benign   appearing\nstudy.") == [
        "no suspicious mass.", "benign appearing study."]
    assert count_tokens("bi-rads 4 .") == 2


def test_list_items_become_sentences():
    report = "FINDINGS:\n1. There is a mass here.\n2. Calcifications are clustered there.\n- skin is normal here"
    assert report_sentences(report) == ["there is a mass here.", "calcifications are clustered there.",
                                        "skin is normal here"]


# ----------------------------------------------------------------------------- sampling
SENTENCES = [f"sentence number {i} here" for i in range(6)]


def test_sampling_is_reproducible_with_a_seed():
    a = sample_texts(SENTENCES, 2, 2, rng=np.random.default_rng(7))
    b = sample_texts(SENTENCES, 2, 2, rng=np.random.default_rng(7))
    assert a == b and len(a) == 2 and a[0] != a[1]
    draws = {tuple(sample_texts(SENTENCES, 2, 1, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 5
    legacy = sample_texts(SENTENCES, 2, 1, rng=np.random.RandomState(3))  # MONAI's self.R
    assert legacy == sample_texts(SENTENCES, 2, 1, rng=np.random.RandomState(3))


def test_sampling_keeps_report_order_and_is_fixed_in_validation():
    texts = sample_texts(SENTENCES, 2, 3, rng=np.random.default_rng(0))
    for text in texts:
        numbers = [int(w) for w in text.split() if w.isdigit()]
        assert numbers == sorted(numbers) and len(numbers) == 3
    val = sample_texts(SENTENCES, 2, 2, train=False)
    assert val == ["sentence number 0 here sentence number 1 here", "sentence number 2 here sentence number 3 here"]
    assert sample_texts(SENTENCES[:1], 2, 2, train=False) == ["sentence number 0 here"] * 2
    assert sample_texts(SENTENCES[:1], 2, 1, rng=np.random.default_rng(0)) == ["sentence number 0 here"] * 2
    assert sample_texts([], 2) == []
    with pytest.raises(ValueError):
        sample_texts(SENTENCES, 0)


# ----------------------------------------------------------------------------- empty reports
ITEMS = [
    {"image": "/data/a.dcm", "source": "image_text", "report": REPORT},
    {"image": "/data/b.dcm", "source": "image_text", "report": "HISTORY: screening only."},
    {"image": "/data/c.dcm", "source": "vindr", "report": ""},
    {"image": "/data/d.dcm", "source": "image_text", "report": ""},
]


def test_filter_empty_reports_error_names_the_image():
    with pytest.raises(EmptyReportError, match=r"/data/b\.dcm.*item 1.*no usable sentences") as info:
        filter_empty_reports(ITEMS, "error")
    assert isinstance(info.value, ValueError)


def test_filter_empty_reports_skip_counts_and_logs(caplog):
    with caplog.at_level(logging.WARNING, logger="mammoclip_monai.text.reports"):
        kept, skipped = filter_empty_reports(ITEMS, EmptyReportPolicy.SKIP)
    assert skipped == 2 and [it["image"] for it in kept] == ["/data/a.dcm", "/data/c.dcm"]
    assert "skipped 2 item(s) with empty reports" in caplog.text
    kept, skipped = filter_empty_reports(ITEMS[:1], "error")
    assert skipped == 0 and len(kept) == 1
    with pytest.raises(ValueError, match="empty_report must be one of"):
        filter_empty_reports(ITEMS, "ignore")


def test_usable_sentences_applies_the_policy():
    assert usable_sentences(ITEMS[0]) == report_sentences(REPORT)
    assert usable_sentences(ITEMS[1], "skip") is None
    with pytest.raises(EmptyReportError, match=r"image /data/d\.dcm \(item 3\)"):
        usable_sentences(ITEMS[3], "error", index=3)
